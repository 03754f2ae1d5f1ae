"""The `symsweep` commands status / query / table / plot / resume over a store written
directly (no Ray), and their one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec import load_sweep
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def results(tmp_path):
    """A fig2 smoke store: manifest of the real expansion, rows for part of the cells."""
    sw = load_sweep(REPO / "sweeps" / "fig2.py")
    trials = sw.expand("smoke")
    st = Store(str(tmp_path), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "source": sw.source, "dedupe": True,
                       "only": None, "success_train_acc": 0.0,
                       "trials": [t.to_dict() for t in trials]})
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    n = 0
    for t in trials:
        c = t.config
        if c["arch"] not in ("vec", "gap") or c["transform"] not in ("identity", "permutation"):
            continue
        acc = 0.5 + 0.01 * c["seed"] + (0.1 if c["arch"] == "gap" else 0)
        status = "diverged" if (c["inference"] == "nn_plus" and c["seed"] == 4) else "completed"
        st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind=t.kind,
                              arch=c["arch"], inference=c["inference"],
                              transform=c["transform"], seed=c["seed"], status=status,
                              best_test_acc=acc, test_acc=acc,
                              # the diverged run never trained (no accuracy): not a success
                              train_acc=None if status == "diverged" else 1.0,
                              derived_from=t.derived_from, started_at=t0, finished_at=t0))
        n += 1
    assert n == 2 * 2 * (1 + 5 + 5)
    return tmp_path


def test_query_table_plot(results, capsys):
    r = str(results)
    assert main(["query", "select inference, count(*) as n from trials group by all "
                 "order by inference", "--results", r, "--format", "csv"]) == 0
    assert capsys.readouterr().out == "inference,n\nnn,20\nnn_plus,20\nntk,4\n"
    assert main(["query", "select count(*) as n from history", "--results", r,
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 0}]
    assert main(["table", "fig2", "--results", r]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "identity" in lines[1] and "permutation" in lines[1]
    assert any(line.split()[:2] == ["NTK", "vec"] and "50.0 (1/1)" in line for line in lines)
    assert main(["table", "fig2", "--results", r, "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.startswith("inference,arch,transform,mean,std,n_success,n_finished")
    # NN+ seed 4 diverged: 4 successful of 5 finished, mean of 0.60..0.63
    line = next(x for x in csv.splitlines() if x.startswith("nn_plus,gap,identity,"))
    mean, std, ok, fin = line.split(",")[3:]
    assert float(mean) == pytest.approx(0.615) and (int(ok), int(fin)) == (4, 5)
    assert float(std) == pytest.approx(0.0129099, rel=1e-4)
    assert "61.5 ± 1.3 (4/5)" in out
    png = results / "f.png"
    assert main(["plot", "fig2", "--results", r, "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    from PIL import Image

    w, h = Image.open(png).size
    assert w > 2.5 * h  # three panels side by side: NTK, NN, NN+


def test_status_counts_and_corrupt_files(results, capsys):
    r = str(results)
    assert main(["status", "fig2", "--results", r]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "330" in out and "missing" in out
    st = Store(r, "fig2")
    victim = st.parts()[0].name
    with open(os.path.join(st.trials_dir, victim), "wb") as f:
        f.write(b"PAR1 this is not parquet PAR1")
    assert main(["status", "fig2", "--results", r]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out and victim in out
    # queries still run but say what they skipped
    assert main(["query", "select count(*) as n from trials", "--results", r]) == 0
    cap = capsys.readouterr()
    assert "corrupt part file" in cap.err and victim in cap.err


def test_errors_are_one_line_exit_2(results, tmp_path, capsys):
    r = str(results)
    cases = [
        ["query", "select nope from trials", "--results", r],
        ["status", "fig9", "--results", r],
        ["table", "fig9", "--results", r],
        ["resume", "fig9", "--results", r],
        ["run", "sweeps/fig2.py", "--preset", "smoke", "--only", "arch", "--results", r],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("symsweep: error: ") and err.count("\n") == 1, (argv, err)


def test_results_root_defaults_to_the_cluster_environment(tmp_path, monkeypatch, capsys):
    """On a cluster the head exports SYMSWEEP_RESULTS, so `ray submit ... -- --preset paper`
    needs no --results; an explicit flag still wins."""
    root = tmp_path / "bucket"
    monkeypatch.setenv("SYMSWEEP_RESULTS", str(root))
    assert main(["status", "fig2"]) == 2
    assert str(root) in capsys.readouterr().err
    assert main(["status", "fig2", "--results", str(tmp_path / "other")]) == 2
    assert str(tmp_path / "other") in capsys.readouterr().err


def test_sweep_file_copied_elsewhere_falls_back_to_the_repository_copy(monkeypatch):
    """`ray submit` copies the sweep file to ~/fig2.py; the manifest may name that copy."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert load_sweep("/nonexistent/place/fig2.py").name == "fig2"
    assert load_sweep("fig2").name == "fig2"
