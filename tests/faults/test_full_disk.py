"""A full disk mid-run (issue 30): the results folder fills up while trials run.

Before: about 1,170 lines of Ray tracebacks, every trial retried against the full disk, and
`Aborted.` with exit 130. Now: the run stops at once with one line naming the folder and its
free space (exit 2), no attempt is retried, nothing half-written is left, and `resume` after
space is freed ends with the same rows as a run that never hit the full disk.

The results root is a small tmpfs where this machine lets the test mount one (root in a
container); elsewhere the worker raises ENOSPC itself, as a write would.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.store import Store

SWEEP = '''
import errno, json, os, tempfile
from orchestrator.spec import Preset, Sweep

BALLAST = {ballast!r}  # filled by the seed-1 trial: the disk is full from then on
INJECT = {inject!r}    # no tmpfs here: raise ENOSPC as a write on a full disk would

def fill_disk():
    if INJECT:
        raise OSError(errno.ENOSPC, "No space left on device", BALLAST)
    try:
        with open(BALLAST, "ab", buffering=0) as f:
            while True:
                f.write(b"\\0" * 4096)
    except OSError:
        pass

def train(config, report=None):
    best = 0.0
    for s in (10, 20, 30):
        if config["seed"] == 1 and s == 20 and not os.path.exists(BALLAST + ".freed"):
            fill_disk()
        acc = 0.1 * config["seed"] + s / 100
        best = max(best, acc)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(dict(step=s), f)
            if report:
                report(dict(step=s, test_acc=acc, train_acc=1.0), d)
    return dict(status="completed", best_test_acc=best, test_acc=acc, train_acc=1.0, steps=30)

SWEEP = Sweep(
    name="full",
    axes=dict(inference=["nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(
        config=dict(dataset="synthetic", max_steps=30, eval_every=10, checkpoint_every=10),
        width=dict(fcn=8), seeds=(0, 1, 2, 3), max_failures=2,
        resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)))),
    workers=dict(train=train),
)
'''


@pytest.fixture
def small_disk(tmp_path):
    """(a results root on a 4 MB tmpfs, True) when this machine can mount one, else
    (a plain folder, False)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True)
    yield mnt, r.returncode == 0
    if r.returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "JAX_PLATFORMS": "cpu"}})
    yield ray
    ray.shutdown()


def _rows(results: Path) -> dict:
    df = Store(str(results), "full").latest()[0]
    return {r.trial_id: (r.status, r.best_test_acc, r.steps) for r in df.itertuples()}


def test_full_disk_stops_at_once_in_one_line_and_resume_finishes_the_clean_table(
        ray_session, tmp_path, small_disk, capsys):
    disk, mounted = small_disk
    results = disk / "results"
    ballast = str(disk / "ballast")
    sweep = tmp_path / "full_sweep.py"
    sweep.write_text(textwrap.dedent(SWEEP).format(ballast=ballast, inject=not mounted))
    argv = ["--results", str(results), "--no-progress", "--no-report"]

    assert main(["run", str(sweep), "--preset", "smoke", *argv]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("symsweep: error:")]
    assert len(lines) == 1, err
    assert "no space left on device in" in lines[0] and " free)" in lines[0]
    assert f"symsweep resume full --results {results}" in lines[0]
    assert "Traceback" not in err and "Aborted" not in err
    st = Store(str(results), "full")
    rows = st.read_trials_all()[0].to_pylist()
    assert all(r["attempt"] == 1 for r in rows)  # no attempt retried against the full disk
    assert st.read_lock() is None  # the driver released its lock
    hidden = [str(p) for p in results.rglob(".*") if p.is_file() and p.suffix == ".tmp"]
    assert hidden == []  # no half-written temporary left behind
    assert st.read_trials_all()[1] == [] and st.read_history()[1] == []  # nothing corrupt

    os.remove(ballast)  # space freed
    Path(ballast + ".freed").touch()
    died = [r for r in rows if r["status"] == "failed"]  # stopped in flight: said so
    assert all("stopped when the disk filled up" in r["error"] for r in died)
    assert main(["resume", "full", "--sweep-file", str(sweep), *argv]) == 0
    capsys.readouterr()
    clean = tmp_path / "clean"
    assert main(["run", str(sweep), "--preset", "smoke", "--results", str(clean),
                 "--no-progress", "--no-report"]) == 0
    assert _rows(results) == _rows(clean) and len(_rows(clean)) == 4
    assert all(s == "completed" for s, _, _ in _rows(results).values())
