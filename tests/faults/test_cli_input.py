"""Bad input on the command line: one line on stderr saying what is wrong and how to fix it,
exit code 2, nothing written (the results folder's files are byte-for-byte unchanged), nothing
started (no Ray) and nothing retried that cannot succeed.

Every case here failed before issue 12: a typo in ``--only`` selected nothing and overwrote
``sweep.json`` with an empty trial list, ``--max-failures -1`` retried forever, a width of 0
failed inside Ray on every attempt, a file or read-only ``--results`` was a traceback, a missing
results root read as 0 rows, ``--metric nope`` was a KeyError and an unknown flag a 40-line
traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fault_helpers import FIG2, REPO, one_line_error, snapshot

from orchestrator.cli import main
from orchestrator.spec import file_sha256, load_sweep, parse_only, select_trials
from orchestrator.store import Store
from workers.errors import ConfigError


def assert_no_ray() -> None:
    """The error came before Ray started (bad input must not wait for a cluster)."""
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


@pytest.fixture()
def results(tmp_path) -> Path:
    """A fig2 smoke results root: the manifest of the real expansion (with the sweep file's
    hash, as `run` writes it) and one finished row."""
    sw = load_sweep(FIG2)
    trials = sw.expand("smoke")
    st = Store(str(tmp_path / "res"), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "source": sw.source,
                       "source_sha256": file_sha256(FIG2), "dedupe": True, "only": None,
                       "success_train_acc": 0.0, "trials": [t.to_dict() for t in trials]})
    t = trials[0]
    c = t.config
    st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="smoke", kind=t.kind,
                          arch=c["arch"], inference=c["inference"], transform=c["transform"],
                          seed=c["seed"], status="completed", best_test_acc=0.5, test_acc=0.5,
                          train_acc=1.0))
    return tmp_path / "res"


def run_argv(results: Path, *extra: str) -> list[str]:
    return ["run", str(FIG2), "--preset", "smoke", "--results", str(results), "--no-progress",
            "--no-report", *extra]


# ----------------------------------------------------------------------------- --only
@pytest.mark.parametrize("only,needles", [
    (["arch=fnc"], ["no trial has arch 'fnc'", "valid values: fcn, gap, lap4, lap8, lcn, vec"]),
    (["archh=vec"], ["unknown field 'archh'", "arch", "inference", "transform", "seed",
                     "kind"]),
    (["transform=identity,rotation"], ["no trial has transform 'rotation'",
                                       "shared_rotation"]),
    (["seed=7"], ["no trial has seed '7'", "valid values: 0, 1, 2, 3, 4"]),
    # values that exist, but never together: kernel cells have seed 0 only
    (["inference=ntk", "seed=3"], ["no trial has all of these values together"]),
    (["arch="], ["expected FIELD=VALUE"]),
])
def test_run_only_typo_is_refused_and_writes_nothing(results, capsys, only, needles):
    before = snapshot(results)
    argv = run_argv(results)
    for o in only:
        argv += ["--only", o]
    assert main(argv) == 2
    one_line_error(capsys, "--only", *needles)
    assert snapshot(results) == before  # sweep.json untouched, no part file, no lock
    assert_no_ray()


def test_dry_run_honours_only_and_refuses_a_typo(results, capsys):
    assert main(["run", str(FIG2), "--preset", "smoke", "--dry-run", "--only", "arch=fcn",
                 "--only", "inference=nn"]) == 0
    out = capsys.readouterr().out
    # fig2 smoke: 5 transforms x 5 seeds of NN with fcn, no kernel cell
    assert "25 trials (0 kernel cells, 25 finite runs)" in out, out
    assert main(["run", str(FIG2), "--preset", "smoke", "--dry-run", "--only",
                 "arch=fnc"]) == 2
    one_line_error(capsys, "no trial has arch 'fnc'")


def test_one_selection_function_for_run_plan_resume_and_run_local(results, tmp_path, capsys):
    """The same validation (and message) wherever --only is used."""
    sw = load_sweep(FIG2)
    trials = sw.expand("smoke")
    with pytest.raises(ConfigError, match="no trial has arch 'fnc'"):
        select_trials(trials, {"arch": ["fnc"]})
    sel = select_trials(trials, parse_only(["arch=fcn", "inference=ntk,nn"]))
    assert {(t.config["arch"], t.config["inference"]) for t in sel} == {("fcn", "ntk"),
                                                                       ("fcn", "nn")}
    # a derived kernel cell whose source is not selected is computed itself
    perm = select_trials(trials, {"inference": ["ntk"], "arch": ["fcn"],
                                  "transform": ["permutation"]})
    assert len(perm) == 1 and perm[0].derived_from is None
    assert select_trials(trials, None) == trials
    # plan
    units = tmp_path / "u.json"
    units.write_text("[]")
    assert main(["plan", str(FIG2), "--preset", "smoke", "--units", str(units), "--only",
                 "arch=fnc"]) == 2
    one_line_error(capsys, "no trial has arch 'fnc'")
    # run_local (the in-process path)
    from orchestrator.runner import run_local

    with pytest.raises(ConfigError, match="unknown field 'archh'"):
        run_local(sw, "smoke", results=str(tmp_path / "local"), only={"archh": ["vec"]})
    assert not (tmp_path / "local").exists()
    # resume re-validates the recorded selection (a manifest edited by hand)
    m = Store(str(results), "fig2").read_manifest()
    m["only"] = {"arch": ["fnc"]}
    Store(str(results), "fig2").write_manifest(m)
    before = snapshot(results)
    assert main(["resume", "fig2", "--results", str(results), "--no-progress",
                 "--no-report"]) == 2
    one_line_error(capsys, "no trial has arch 'fnc'")
    assert snapshot(results) == before
    assert_no_ray()


# ----------------------------------------------------------------------------- --max-failures
@pytest.mark.parametrize("cmd", ["run", "resume"])
def test_negative_max_failures_is_refused(results, capsys, cmd):
    before = snapshot(results)
    argv = run_argv(results) if cmd == "run" else ["resume", "fig2", "--results",
                                                    str(results), "--no-progress"]
    assert main([*argv, "--max-failures", "-1"]) == 2
    one_line_error(capsys, "--max-failures -1", ">= 0")
    assert snapshot(results) == before
    assert_no_ray()


def test_negative_max_failures_in_a_preset_is_refused():
    from orchestrator.spec import Preset, Sweep

    with pytest.raises(ConfigError, match="max_failures: expected an integer >= 0"):
        Sweep(name="s", axes=dict(inference=["ntk"], arch=["fcn"], transform=["identity"]),
              presets=dict(smoke=Preset(config={}, max_failures=-1)))


# ----------------------------------------------------------------------------- config ranges
BAD_SWEEP = '''
from orchestrator.spec import Preset, Sweep

SWEEP = Sweep(
    name="bad",
    axes=dict(inference=["ntk", "nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(
        config=dict(dataset="synthetic", image_size=8, train_size=32, test_size=16, depth=2,
                    max_steps=10, eval_every=5, batch_size=8),
        width=dict(fcn=16), seeds=(0,),
        rules=(({{"kind": "{kind}"}}, {{"{key}": {value}}}),))),
)
'''


@pytest.mark.parametrize("key,value,kind,needle", [
    ("width", 0, "train", "width must be >= 1, got 0"),
    ("depth", 0, "kernel", "depth must be >= 1, got 0"),
    ("depth", -2, "train", "depth must be >= 1, got -2"),
    ("train_size", 0, "kernel", "train_size must be >= 1, got 0"),
    ("test_size", -1, "train", "test_size must be >= 1, got -1"),
    ("batch_size", 0, "train", "batch_size must be >= 1, got 0"),
    ("w_var", 0.0, "kernel", "w_var must be > 0, got 0.0"),
    ("momentum", 1.5, "train", "momentum must be >= 0 and < 1, got 1.5"),
    ("lr_factor", -1.0, "train", "lr_factor must be > 0, got -1.0"),
    ("val_size", -1, "kernel", "val_size must be >= 0, got -1"),
])
def test_out_of_range_config_fails_at_expansion_naming_the_trial(tmp_path, capsys, key, value,
                                                                 kind, needle):
    f = tmp_path / "bad.py"
    f.write_text(textwrap.dedent(BAD_SWEEP).format(key=key, value=value, kind=kind))
    res = tmp_path / "res"
    inference = "ntk" if kind == "kernel" else "nn"
    for argv in (["run", str(f), "--results", str(res), "--no-progress", "--no-report"],
                 ["run", str(f), "--dry-run"]):
        assert main(argv) == 2
        one_line_error(capsys, needle, f"trial {inference}/fcn/identity seed 0 (id ",
                       "sweep 'bad' preset smoke")
    assert not res.exists()  # no manifest, no lock, no results folder
    assert_no_ray()


def test_every_shipped_sweep_is_in_range():
    """The ranges reject no preset of the repository's sweeps."""
    for f in sorted((REPO / "sweeps").glob("fig*.py")):  # not __init__ / common
        sw = load_sweep(f)
        for p in sw.presets:
            assert sw.expand(p)


# ----------------------------------------------------------------------------- --results
def test_results_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "results"
    f.write_text("not a directory")
    assert main(run_argv(f)) == 2
    one_line_error(capsys, f"--results {f}", "is a file, not a directory")
    assert f.read_text() == "not a directory"
    assert main(["resume", "fig2", "--results", str(f)]) == 2
    one_line_error(capsys, "no such results directory")
    assert_no_ray()


def _make_read_only(root: Path) -> list[Path]:
    """chmod a-w the tree and, as root (who ignores modes), set the immutable flag; skip when
    this machine cannot make a directory read-only. Returns what to undo."""
    paths = [root, *root.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a directory read-only as root: {r.stderr!r}")
    try:
        (root / ".probe").write_text("x")
    except OSError:
        return paths
    pytest.skip("this filesystem ignores read-only modes")


def _undo_read_only(paths: list[Path]) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)
    for p in paths:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_results_refused_for_run_and_resume_fine_for_reading(results, capsys):
    before = snapshot(results)
    undo = _make_read_only(results)
    try:
        assert main(run_argv(results)) == 2
        one_line_error(capsys, f"--results {results}", "cannot write", "writable directory")
        assert main(["resume", "fig2", "--results", str(results), "--no-progress"]) == 2
        one_line_error(capsys, f"--results {results}", "cannot write")
        # reading a read-only root is fine
        assert main(["status", "fig2", "--results", str(results)]) == 0
        assert main(["query", "select count(*) as n from trials", "--results", str(results),
                     "--format", "csv"]) == 0
        assert capsys.readouterr().out.endswith("n\n1\n")
    finally:
        _undo_read_only(undo)
    assert snapshot(results) == before
    assert_no_ray()


@pytest.mark.parametrize("argv,needles", [
    (["status", "fig2"], ["no such results directory"]),
    (["query", "select count(*) from trials"], ["no such results directory"]),
    (["table", "fig2"], ["no such results directory"]),
])
def test_missing_results_root_is_an_error_not_zero_rows(tmp_path, capsys, argv, needles):
    missing = tmp_path / "typo"
    assert main([*argv, "--results", str(missing)]) == 2
    one_line_error(capsys, str(missing), *needles)
    assert not missing.exists()


def test_query_on_a_missing_sweep_is_an_error(results, capsys):
    before = snapshot(results)
    assert main(["query", "select count(*) from trials", "--results", str(results),
                 "--sweep", "fig9"]) == 2
    one_line_error(capsys, "--sweep fig9", "found: fig2")
    assert snapshot(results) == before


# ----------------------------------------------------------------------------- table / plot
@pytest.mark.parametrize("cmd", ["table", "plot"])
def test_unknown_metric_lists_the_valid_ones(results, capsys, cmd):
    before = snapshot(results)
    assert main([cmd, "fig2", "--results", str(results), "--metric", "nope"]) == 2
    one_line_error(capsys, "--metric 'nope'", "best_test_acc", "test_acc", "train_acc")
    assert snapshot(results) == before  # no plot written


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("argv,needle", [
    (["run", str(FIG2), "--bogus"], "No such option: --bogus"),
    (["status", "fig2", "--resultz", "x"], "No such option: --resultz"),
    (["run"], "Missing argument"),
    (["run", str(FIG2), "--max-failures", "many"], "--max-failures"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    one_line_error(capsys, needle, "--help")


def test_usage_error_of_the_console_script_is_one_line():
    """The installed entry point (a real process): no traceback."""
    r = subprocess.run([sys.executable, "-c", "from orchestrator.cli import console; console()",
                        "run", str(FIG2), "--bogus"], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "No such option: --bogus" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- not retried
USER_ERROR_SWEEP = '''
import numpy as np

from orchestrator.spec import Preset, Sweep
from workers.errors import ConfigError, DataError


def bad_data(config, report=None):
    raise DataError("CIFAR-10 not found under /nowhere; pass --data-dir\\n(second line)")


def bad_tile(x):
    raise ConfigError("tile needs image_size >= 4; set image_size in the preset")


def kernel(config, report=None, map_tiles=None):
    map_tiles(bad_tile, [dict(x=np.arange(3.0))])
    return dict(status="completed")


SWEEP = Sweep(
    name="usererr",
    axes=dict(inference=["ntk", "nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(config=dict(dataset="synthetic"), width=dict(fcn=8), seeds=(0,),
                              max_failures=3,
                              resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)))),
    workers=dict(train=bad_data, kernel=kernel),
)
'''


def test_config_and_data_errors_in_a_trial_are_not_retried(tmp_path):
    """A UserError inside a trial fails the same way every time: one attempt, stored as its
    one-line message (for a kernel trial the tile task's own message, not Ray's wrapper),
    counted as failed, never retried although max_failures=3."""
    from orchestrator.runner import run_sweep

    f = tmp_path / "usererr.py"
    f.write_text(USER_ERROR_SWEEP)
    sw = load_sweep(f)
    res = tmp_path / "res"
    s = run_sweep(sw, "smoke", results=str(res), progress=False, tracking=False, num_cpus=2)
    assert s.launched == 2 and s.failed == 2 and s.completed == 0 and s.retries == 0, s
    st = Store(str(res), "usererr")
    df, corrupt = st.read_trials_all()
    df = df.to_pandas()
    assert not corrupt and len(df) == 2, df[["trial_id", "attempt", "status", "error"]]
    assert (df["attempt"] == 1).all() and (df["status"] == "failed").all()
    errors = dict(zip(df["kind"], df["error"], strict=True))
    assert errors == {
        "train": "CIFAR-10 not found under /nowhere; pass --data-dir",
        "kernel": "tile needs image_size >= 4; set image_size in the preset",
    }
    m = st.read_manifest()
    assert m["source_sha256"] == file_sha256(f)  # what resume checks the sweep file against
    assert json.dumps(m)  # plain JSON
