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
