"""The Python API (orchestrator.results): load and connect over a store written as the runner
writes it (fake attempts in the real schema)."""

import pandas as pd
import pytest

from orchestrator.results import connect, load
from orchestrator.store import Store, now_utc
from workers.errors import ConfigError


def _attempt(store, tid, attempt, status, acc):
    store.write_attempt({"trial_id": tid, "attempt": attempt, "preset": "smoke", "kind": "train",
                         "arch": "vec", "inference": "nn", "transform": "identity", "seed": 0,
                         "status": status, "best_test_acc": acc, "started_at": now_utc(),
                         "finished_at": now_utc()},
                        [{"step": 10, "test_acc": acc}, {"step": 20, "test_acc": acc}])


@pytest.fixture
def root(tmp_path):
    st = Store(str(tmp_path), "figx")
    st.write_manifest({"sweep": "figx", "preset": "smoke", "trials": []})
    _attempt(st, "a" * 16, 1, "failed", None)
    _attempt(st, "a" * 16, 2, "completed", 0.5)
    _attempt(st, "b" * 16, 1, "completed", 0.25)
    return str(tmp_path)


def test_load_views(root):
    latest = load("figx", root)
    assert isinstance(latest, pd.DataFrame)
    pairs = sorted(zip(latest.trial_id, latest.attempt, strict=True))
    assert pairs == [("a" * 16, 2), ("b" * 16, 1)]
    assert len(load("figx", root, view="trials_all")) == 3
    hist = load("figx", root, view="history")
    assert len(hist) == 4 and set(hist.metric) == {"test_acc"}  # the failed one had no acc
    con = connect("figx", root)
    assert con.execute("select avg(best_test_acc) from trials").fetchone()[0] == \
        pytest.approx(0.375)


def test_default_root_from_the_environment(root, monkeypatch):
    monkeypatch.setenv("SYMSWEEP_RESULTS", root)
    assert len(load("figx")) == 2


def test_bad_names_are_one_line_errors(root):
    with pytest.raises(ConfigError, match="no sweep 'nope'"):
        load("nope", root)
    with pytest.raises(ConfigError, match="view 'runs': choose one of trials, trials_all"):
        load("figx", root, view="runs")


def test_symsweep_ls(root, tmp_path, capsys):
    from orchestrator.cli import main

    st = Store(root, "figx")
    st.write_manifest({"sweep": "figx", "preset": "smoke",
                       "trials": [{"trial_id": "a" * 16}, {"trial_id": "b" * 16},
                                  {"trial_id": "c" * 16}]})
    assert main(["ls", "--results", root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["sweep", "preset", "trials", "finished", "failed", "missing"]
    assert out[1].split()[:6] == ["figx", "smoke", "3", "2", "0", "1"]
    assert main(["ls", "--results", str(tmp_path / "nope")]) == 2
