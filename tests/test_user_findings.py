"""What a new user found on main (ux job): each test failed before its fix.

Stores are written directly (no Ray); the CLI is called through `orchestrator.cli.main`, so
exit codes and the exact stderr lines are what a shell sees."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from smoke_helpers import fig2_smoke_store

from orchestrator.cli import main
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _store(root: Path) -> Store:
    """A fig2 smoke store (fcn x identity): kernel cells without steps / eta0, finite runs
    with steps=40, wall_s=2.5, eta0=0.125, test_mse=0.09, and a short history."""
    st, trials = fig2_smoke_store(root, lambda c: c["arch"] == "fcn"
                                  and c["transform"] == "identity")
    for t in trials:
        c = t.config
        train = t.kind == "train"
        hist = [] if not train else [
            {"step": s, "train_loss": 0.05 / s, "train_acc": 0.5, "test_acc": 0.3,
             "test_mse": 0.09, "val_acc": float("nan")} for s in (10, 20)]
        st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind=t.kind,
                              arch=c["arch"], inference=c["inference"],
                              transform=c["transform"], seed=c["seed"], status="completed",
                              dataset="synthetic", best_test_acc=0.3, test_acc=0.3,
                              train_acc=1.0, test_mse=0.09, wall_s=2.5,
                              steps=40 if train else None, eta0=0.125 if train else None,
                              derived_from=t.derived_from, started_at=T0, finished_at=T0,
                              config_json=json.dumps(c, sort_keys=True)), hist)
    return st


# 1. table --metric: only accuracies are percentages; a metric a kind lacks is n/a

@pytest.mark.parametrize("metric,unit,value", [("wall_s", "seconds", "2.5"),
                                               ("steps", "SGD steps", "40"),
                                               ("test_mse", "MSE", "0.09"),
                                               ("eta0", "eta_0", "0.125")])
def test_table_of_a_raw_metric_is_not_in_percent(tmp_path, capsys, metric, unit, value):
    _store(tmp_path)
    assert main(["table", "fig2", "--results", str(tmp_path), "--metric", metric]) == 0
    out = capsys.readouterr().out
    head, body = out.split("\n", 1)
    assert " in %" not in head and unit in head
    assert f" {value} " in body and f" {float(value) * 100:g} " not in body
    if metric in ("steps", "eta0"):  # kernel cells have no SGD steps / eta_0
        ntk = [ln for ln in body.splitlines() if ln.startswith("NTK")]
        assert ntk and "n/a" in ntk[0] and "(0/" not in ntk[0]


def test_table_of_an_accuracy_stays_in_percent(tmp_path, capsys):
    _store(tmp_path)
    assert main(["table", "fig2", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best_test_acc in %" in out and "30.0" in out and "n/a" not in out


# 2. plot --out that cannot be written: one line, exit 2, no temporary file left

@pytest.mark.parametrize("target", ["dir", "file_parent"])
def test_plot_out_unwritable_is_one_line_exit_2(tmp_path, capsys, target):
    _store(tmp_path / "r")
    if target == "dir":
        out = tmp_path / "somedir.png"
        out.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "x.png"
    assert main(["plot", "fig2", "--results", str(tmp_path / "r"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"symsweep: error: cannot write --out {out}")
    assert "pass a writable file path" in err
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_atomic_removes_its_temporary_on_failure(tmp_path):
    import pyarrow.fs as pafs

    from orchestrator.fsio import write_atomic

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "inside").write_text("keep")  # a non-empty directory: move fails
    with pytest.raises(OSError):
        write_atomic(pafs.LocalFileSystem(), str(tmp_path / "target"), b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# 3. ls lists a sweep interrupted before its first part (only its manifest)

def test_ls_lists_a_sweep_with_only_its_manifest(tmp_path, capsys):
    st = Store(str(tmp_path), "fig3")
    st.write_manifest({"sweep": "fig3", "preset": "smoke", "dedupe": True, "only": None,
                       "trials": [{"trial_id": f"t{i}", "kind": "train"} for i in range(3)]})
    assert main(["ls", "--results", str(tmp_path)]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["fig3", "smoke", "3", "0", "0", "3", "-"] in rows
    assert main(["status", "fig3", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CORRUPT" not in out and "0 trials are copies" in out
    assert main(["table", "fig3", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symsweep: error:")


# 4. status names a corrupt history file and exits 1

@pytest.mark.parametrize("compacted", [False, True])
def test_status_names_a_corrupt_history_file(tmp_path, capsys, compacted):
    st = _store(tmp_path)
    if compacted:
        st.compact()
    hist = sorted(Path(st.history_dir).glob("compacted-*.parquet" if compacted else "*.parquet"))
    assert hist
    hist[0].write_bytes(b"garbage" * 10)
    code = main(["status", "fig2", "--results", str(tmp_path)])
    out, err = capsys.readouterr()
    if compacted:  # the parts it folded exist only there: an error naming it, alone, exit 2
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"{st.history_dir}/{hist[0].name}" in err
    else:  # a loose part: named under the table, exit 1 like a corrupt trial part
        assert code == 1 and "CORRUPT" in out and f"{st.history_dir}/{hist[0].name}" in out


# 10. plural of "trials are copies"

def test_status_says_one_trial_is_a_copy(tmp_path, capsys):
    st = Store(str(tmp_path), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "dedupe": True, "only": None,
                       "trials": [{"trial_id": "a", "kind": "kernel"},
                                  {"trial_id": "b", "kind": "kernel", "derived_from": "a"}]})
    assert main(["status", "fig2", "--results", str(tmp_path)]) == 0
    assert "1 trial is a copy of an equal kernel cell" in capsys.readouterr().out


# 7. a corrupt compacted trials file: the error first and alone (resume, ls)

def _corrupt_compacted(root: Path) -> Path:
    st = _store(root)
    st.compact()
    bad = sorted(Path(st.trials_dir).glob("compacted-*.parquet"))[0]
    bad.write_bytes(b"garbage" * 10)
    return bad


def test_resume_on_a_corrupt_compacted_file_says_only_that(tmp_path, capsys):
    bad = _corrupt_compacted(tmp_path)
    assert main(["resume", "fig2", "--results", str(tmp_path), "--force", "--no-report"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(bad) in err and "MLflow" not in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def test_ls_on_a_corrupt_compacted_file_prints_nothing_before_the_error(tmp_path, capsys):
    bad = _corrupt_compacted(tmp_path)
    assert main(["ls", "--results", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(bad) in err


# 8. the Python API names root=, and a missing root; data prepare's error alone

def test_results_load_names_root_and_a_missing_folder(tmp_path):
    from orchestrator.results import load
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match=r"root='[^']*nope': no such results folder"):
        load("fig2", root=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"no sweep 'fig2' under .*pass root=$"):
        load("fig2", root=str(tmp_path))


def test_data_prepare_error_has_no_empty_line_before_it(tmp_path, capsys):
    assert main(["data", "prepare", "--data-dir", str(tmp_path / "nope"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("symsweep: error: --data-dir") and err.count("\n") == 1


# 6 and 9: the run summary's resume command is never wrapped; an interrupted run exits 130

def _fake_run(monkeypatch, outcome):
    import orchestrator.runner as runner

    def run_sweep(*a, **k):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    monkeypatch.setattr(runner, "run_sweep", run_sweep)


def test_interrupted_tune_run_exits_130_with_the_resume_command_on_one_line(
        tmp_path, monkeypatch, capsys):
    from orchestrator.runner import RunSummary

    # Tune returned after Ctrl-C: 2 of 3 launched trials have no row
    _fake_run(monkeypatch, RunSummary(total=3, skipped=0, launched=3, derived_written=0,
                                      completed=1))
    results = tmp_path / ("a-long-results-folder-name-" * 4)  # the command is > 80 columns
    argv = ["run", str(REPO / "sweeps" / "fig3.py"), "--results", str(results), "--no-report"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    cmd = f"`symsweep resume fig3 --results {results}`"
    assert len(cmd) > 80 and any(cmd in ln for ln in err.splitlines())


def test_a_stopped_run_says_how_many_trials_never_started(tmp_path, monkeypatch, capsys):
    from orchestrator.runner import RunSummary

    # `symsweep stop` with 1 of 5 finished, 1 in flight (interrupted), 3 not yet started
    _fake_run(monkeypatch, RunSummary(total=5, skipped=0, launched=5, derived_written=0,
                                      completed=1, interrupted=1, stopped_by="symsweep stop",
                                      exit_code=130))
    argv = ["run", str(REPO / "sweeps" / "fig3.py"), "--results", str(tmp_path), "--no-report"]
    assert main(argv) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "5 launched (1 completed, 0 diverged, 0 failed, 1 interrupted, 3 not started," in err
    assert "stopped by symsweep stop: 4 of 5 trials did not finish" in err


def test_ctrl_c_outside_tune_exits_130(tmp_path, monkeypatch, capsys):
    _fake_run(monkeypatch, KeyboardInterrupt())
    argv = ["run", str(REPO / "sweeps" / "fig2.py"), "--results", str(tmp_path), "--no-report"]
    assert main(argv) == 130


# 5. the minibatch loss 0.5*mean((f-y)^2) is drawn x2, labelled, on the MSE axis

def test_learning_curve_draws_the_minibatch_loss_as_an_mse(tmp_path, monkeypatch):
    import orchestrator.figures.curves as curves

    st = _store(tmp_path)
    tid = next(t["trial_id"] for t in st.read_manifest()["trials"] if t["kind"] == "train")
    drawn = {}

    def keep(fig, out, *a, **k):
        drawn.update({ln.get_label(): ln.get_ydata() for ln in fig.axes[0].get_lines()})
        return out
    monkeypatch.setattr(curves, "finish", keep)
    curves.trial_curves(str(tmp_path), tid)
    loss = [k for k in drawn if k.startswith("training MSE (minibatches")]
    assert loss and "2 × loss" in loss[0]
    assert list(drawn[loss[0]]) == pytest.approx([2 * 0.05 / 10, 2 * 0.05 / 20])
    assert list(drawn["test MSE"]) == pytest.approx([0.09, 0.09])
