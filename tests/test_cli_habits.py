"""CLI habits (issue 15 item 4): `--set KEY=VALUE`, `symsweep show TRIAL_ID`, the `running`
column of `status`, plain progress lines when stdout is not a terminal, no rich markup eaten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults.fault_helpers import one_line_error  # the one check of a one-line CLI error

from orchestrator.cli import main
from orchestrator.layout import ResultsLayout
from orchestrator.spec import load_sweep, parse_overrides, parse_set_value
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIG2 = REPO / "sweeps" / "fig2.py"


# ====================================================================== --set
def test_set_values_are_python_literals_or_bare_words():
    # ast.literal_eval: numbers (1e-3 too, which YAML 1.1 would read as a string), booleans,
    # quoted strings; anything that is not a literal is the text itself
    assert parse_set_value("64") == 64 and parse_set_value("1e-3") == 1e-3
    assert parse_set_value("True") is True and parse_set_value("'x y'") == "x y"
    assert parse_set_value("cifar10") == "cifar10" and parse_set_value("a=b") == "a=b"
    assert parse_overrides(["max_steps=100", "w_var=2", "max_steps=7"]) == {
        "max_steps": 7, "w_var": 2.0}  # the later one wins; ints normalised for float keys
    assert parse_overrides(None) == {}


def test_overrides_are_config_and_so_trial_ids():
    sw = load_sweep(FIG2)
    base = {t.trial_id: t for t in sw.expand("smoke")}
    steps = sw.with_overrides({"max_steps": 7}).expand("smoke")
    assert len(steps) == len(base)
    for t in steps:
        if t.kind == "train":  # a train-only key: a new finite run...
            assert t.config["max_steps"] == 7 and t.trial_id not in base
        else:  # ...and the same kernel cell (it does not change an infinite-width kernel)
            assert "max_steps" not in t.config and t.trial_id in base
    wvar = sw.with_overrides({"w_var": 1.5}).expand("smoke")
    assert all(t.config["w_var"] == 1.5 and t.trial_id not in base for t in wvar)
    # a runtime key is config but not science: same ids
    where = sw.with_overrides({"cache_dir": "/elsewhere"}).expand("smoke")
    assert {t.trial_id for t in where} == set(base)
    assert all(t.config["cache_dir"] == "/elsewhere" for t in where)
    # the original sweep is unchanged
    assert {t.trial_id for t in sw.expand("smoke")} == set(base)


def test_set_on_an_axis_of_the_sweep_is_refused():
    fig3 = load_sweep(REPO / "sweeps" / "fig3.py")
    axes = [a for a in fig3.axes if a not in ("inference", "arch", "transform")]
    assert axes, fig3.axes
    with pytest.raises(ConfigError, match=f"{axes[0]} is an axis of sweep"):
        fig3.with_overrides({axes[0]: 1})


@pytest.mark.parametrize("args,needles", [
    (["--set", "nope=1"], ["--set nope=1", "unknown config key 'nope'"]),
    (["--set", "max_steps=1.5"], ["--set max_steps=1.5", "expected an integer"]),
    (["--set", "flip=yes"], ["--set flip='yes'", "expected True or False"]),
    (["--set", "width=0"], ["--set width=0", "width must be >= 1"]),
    (["--set", "momentum=1"], ["momentum must be >= 0 and < 1"]),
    (["--set", "arch=vec"], ["arch is an axis", "--only arch="]),
    (["--set", "seed=3"], ["seed is an axis"]),
    (["--set", "max_steps"], ["expected KEY=VALUE"]),
])
def test_bad_set_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, needles):
    res = tmp_path / "res"
    assert main(["run", str(FIG2), "--results", str(res), "--no-progress", *args]) == 2
    one_line_error(capsys, *needles)
    assert not res.exists()
    # the sweep file as a script takes the same flags
    from orchestrator.cli import script_main

    assert script_main(load_sweep(FIG2), ["--results", str(res), *args]) == 2
    one_line_error(capsys, *needles)
    assert not res.exists()
    # and so does `plan`, before it measures anything
    assert main(["plan", str(FIG2), "--preset", "smoke", *args]) == 2
    one_line_error(capsys, *needles)


def test_dry_run_shows_the_overrides(capsys):
    assert main(["run", str(FIG2), "--dry-run", "--set", "max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "fig2 [smoke] --set max_steps=7: 330 trials" in out, out


# ====================================================================== progress, markup
def _fake_trial(tid: str):
    from types import SimpleNamespace

    return SimpleNamespace(config={"trial": {"trial_id": tid}})


def _progress(console, **kw):
    from orchestrator.progress import ProgressCallback

    return ProgressCallback(total=3, title="fig2 [smoke]", on_attempt_end=lambda _t: None,
                            console=console, **kw)


def test_progress_is_plain_periodic_lines_when_not_a_terminal():
    import io

    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False, width=60)  # a SLURM / nohup log file
    with _progress(con, line_every_s=0.0) as cb:  # a line at every event
        cb.on_trial_start(0, [], _fake_trial("a"))
        cb.on_trial_start(0, [], _fake_trial("b"))
        cb.on_trial_complete(0, [], _fake_trial("a"))
        cb.on_trial_error(0, [], _fake_trial("b"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 6 and not any("\x1b" in x for x in lines)  # no escape codes
    # whole lines (never wrapped at the console's width), the title's "[smoke]" kept
    assert lines[0].endswith("fig2 [smoke]: 0/3 done, 0 running, 0 failed, 3 pending, "
                             "0 retries; elapsed 0:00:00, ETA ?")
    assert "fig2 [smoke]: 0/3 done, 2 running, 0 failed, 1 pending" in lines[2]
    assert "fig2 [smoke]: 1/3 done, 0 running, 1 failed, 1 pending" in lines[-1]
    # periodic: with a long period only the first and the last line
    buf = io.StringIO()
    with _progress(Console(file=buf, force_terminal=False), line_every_s=3600.0) as cb:
        for t in "abc":
            cb.on_trial_start(0, [], _fake_trial(t))
            cb.on_trial_complete(0, [], _fake_trial(t))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "3/3 done" in lines[1], lines


def test_the_live_table_on_a_terminal_keeps_the_smoke_in_its_title():
    import io

    from rich.console import Console

    buf = io.StringIO()
    with _progress(Console(file=buf, force_terminal=True, width=100)) as cb:
        cb.on_trial_start(0, [], _fake_trial("a"))
    out = buf.getvalue()
    assert "fig2 [smoke]" in out and "done" in out


def test_status_prints_brackets_and_errors_as_written(tmp_path, capsys):
    from orchestrator.store import Store

    sw = load_sweep(FIG2)
    trials = sw.expand("smoke")
    st = Store(str(tmp_path), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "trials": [t.to_dict()
                                                                     for t in trials]})
    t = next(t for t in trials if t.kind == "train")
    c = t.config
    st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind="train",
                          arch=c["arch"], inference=c["inference"], transform=c["transform"],
                          seed=c["seed"], status="failed",
                          error="ConfigError: width [bold]0[/bold] is not allowed"))
    assert main(["status", "fig2", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fig2 [smoke] under" in out
    assert "width [bold]0[/bold] is not allowed" in out


# ====================================================================== show, running
@pytest.fixture()
def shown(tmp_path):
    """fig2 smoke: one finite trial with a failed attempt (traceback), a completed attempt
    resumed from step 20 with history, a checkpoint on disk; another trial in flight."""
    import datetime as dt

    from orchestrator.checkpoints import TrialCheckpoints
    from orchestrator.store import TIME_KEY, Store

    sw = load_sweep(FIG2)
    trials = sw.expand("smoke")
    st = Store(str(tmp_path), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "trials": [t.to_dict()
                                                                     for t in trials]})
    t, other = [t for t in trials if t.kind == "train"][:2]
    c = t.config
    t0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
    base = dict(trial_id=t.trial_id, preset="smoke", kind="train", arch=c["arch"],
                inference=c["inference"], transform=c["transform"], seed=c["seed"],
                started_at=t0, finished_at=t0, config_json=json.dumps(c), host="node-1")
    st.write_attempt({**base, "attempt": 1, "status": "failed", "start_step": 0,
                      "error": "RuntimeError: node [lost]",
                      "traceback": "Traceback (most recent call last):\n  File \"x.py\", "
                                   "line 1, in <module>\nRuntimeError: node [lost]\n"})
    st.write_attempt({**base, "attempt": 2, "status": "completed", "start_step": 20,
                      "steps": 40, "best_test_acc": 0.25, "test_acc": 0.2, "wall_s": 3.5,
                      "metrics_json": json.dumps({"resumed_from": 20})},
                     [{"step": s, "test_acc": s / 200, TIME_KEY: 1_764_558_000_000 + s}
                      for s in (30, 40)])
    src = tmp_path / "ck"
    src.mkdir()
    (src / "state.json").write_text("{}")
    TrialCheckpoints(ResultsLayout(str(tmp_path), "fig2"), t.trial_id, keep=0).save(str(src), 20)
    st.mark_running(other.trial_id, 1, {"started_at": "2026-12-01T03:05:00+00:00"})
    return tmp_path, t.trial_id, other.trial_id, [x.trial_id for x in trials]


def _unique_prefix(tid: str, ids: list[str]) -> str:
    for n in range(1, len(tid) + 1):
        if sum(i.startswith(tid[:n]) for i in ids) == 1:
            return tid[:n]
    raise AssertionError


def test_show_a_trial_by_an_unambiguous_prefix(shown, capsys):
    root, tid, _, ids = shown
    short = tid[:max(4, len(_unique_prefix(tid, ids)))]  # git-like: 4 characters at least
    assert main(["show", short, "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trial {tid}  sweep fig2 [smoke]  train: ")
    assert "  width = " in out and "  max_steps = " in out  # the config
    assert "attempts: 2" in out
    assert "#1 failed: start_step 0" in out and "error: RuntimeError: node [lost]" in out
    assert "       Traceback (most recent call last):" in out  # the stored traceback
    assert "#2 completed: start_step 20, steps 40" in out
    assert "best_test_acc=0.25" in out and "resumed_from=20" in out
    assert "history of attempt 2: 2 points, steps 30..40; test_acc" in out
    assert "checkpoints on disk" in out and "  step 20: " in out


def test_show_refuses_unknown_and_ambiguous_ids(shown, capsys):
    root, _, _, ids = shown
    assert main(["show", "zzzz", "--results", str(root)]) == 2
    one_line_error(capsys, "no trial 'zzzz' under")
    assert main(["show", ids[0][:3], "--results", str(root)]) == 2
    one_line_error(capsys, "give at least 4 characters")
    from orchestrator.store import Store

    other = Store(str(root), "other")  # two trials whose ids share 4 characters
    for tid in ("abcd0001", "abcd0002"):
        other.write_attempt(dict(trial_id=tid, attempt=1, kind="train", status="completed"))
    assert main(["show", "abcd", "--results", str(root)]) == 2
    one_line_error(capsys, "prefix 'abcd' is ambiguous, 2 trials match: abcd0001 (other), "
                   "abcd0002 (other); give more characters")
    assert main(["show", "abcd0002", "--results", str(root)]) == 0
    assert capsys.readouterr().out.startswith("trial abcd0002  sweep other [?]")
    assert main(["show", "abc", "--results", str(root / "nope")]) == 2
    one_line_error(capsys, "no such results directory")


def test_status_counts_running_trials_only_under_a_live_driver(shown, capsys):
    from orchestrator.store import Store

    root, tid, running, _ = shown
    st = Store(str(root), "fig2")

    def row(name: str) -> list[str]:
        line = next(x for x in capsys.readouterr().out.splitlines() if f" {name} " in x)
        return line.replace("│", " ").split()

    # no driver: a marker is a leftover, the trial is missing
    assert main(["status", "fig2", "--results", str(root)]) == 0
    # kind completed diverged failed interrupted RUNNING missing total
    assert row("train")[5] == "0"
    lock, _ = st.acquire_lock()  # a live driver (this process)
    try:
        assert main(["status", "fig2", "--results", str(root)]) == 0
        cells = row("train")
        assert cells[1:6] == ["1", "0", "0", "0", "1"], cells
        # an attempt newer than the last row of a failed trial counts as running too
        st.mark_running(tid, 3, {"started_at": "now"})
        assert main(["status", "fig2", "--results", str(root)]) == 0
        assert row("train")[1:6] == ["0", "0", "0", "0", "2"]
        assert main(["show", running, "--results", str(root)]) == 0
        assert "RUNNING attempt 1 since 2026-12-01T03:05:00+00:00" in capsys.readouterr().out
    finally:
        st.release_lock(lock)


def test_resume_applies_the_recorded_overrides(tmp_path, capsys):
    """The manifest's --set values are applied again (and checked again: a results folder is
    data): the resumed expansion has the same trial ids, so nothing finished runs twice."""
    from orchestrator.spec import file_sha256, select_trials
    from orchestrator.store import Store

    only = {"arch": ["fcn"], "transform": ["identity"], "inference": ["nn"]}
    trials = select_trials(load_sweep(FIG2).with_overrides({"max_steps": 7}).expand("smoke"),
                           only)
    assert len(trials) == 5
    st = Store(str(tmp_path), "fig2")
    m = {"sweep": "fig2", "preset": "smoke", "source_sha256": file_sha256(FIG2),
         "dedupe": True, "only": only, "overrides": {"max_steps": 7},
         "trials": [t.to_dict() for t in trials]}
    st.write_manifest(m)
    for t in trials:
        st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind="train",
                              status="completed", config_json=json.dumps(t.config)))
    args = ["resume", "fig2", "--results", str(tmp_path), "--no-report", "--no-progress"]
    assert main(args) == 0
    assert "5 trials: 5 already finished, 0 launched" in capsys.readouterr().err
    st.write_manifest({**m, "overrides": {"max_steps": -1}})
    assert main(args) == 2
    one_line_error(capsys, "--set max_steps=-1", "max_steps must be >= 0")
