"""CLI habits (issue 15 item 4): `--set KEY=VALUE`, `symsweep show TRIAL_ID`, the `running`
column of `status`, plain progress lines when stdout is not a terminal, no rich markup eaten."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec import load_sweep, parse_overrides, parse_set_value
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIG2 = REPO / "sweeps" / "fig2.py"


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("symsweep: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


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


def test_dry_run_shows_the_overrides(capsys):
    assert main(["run", str(FIG2), "--dry-run", "--set", "max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "fig2 [smoke] --set max_steps=7: 330 trials" in out, out


# ====================================================================== progress, markup
def _fake_trial(tid: str):
    from types import SimpleNamespace

    return SimpleNamespace(config={"trial": {"trial_id": tid}})


def _progress(console, **kw):
    from orchestrator.tracking import ProgressCallback

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
