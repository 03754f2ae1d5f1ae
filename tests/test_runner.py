"""Orchestration through Ray Tune with tiny fake workers: retries from checkpoints, divergence,
resume after a killed driver, the driver lock, the tile cache as Ray tasks, MLflow mirroring.

One Ray session is shared by the module (start-up costs ~5-10 s). The fake workers live in a
sweep file written to tmp (as users write them) and travel to Ray workers by value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.runner import run_local, run_sweep
from orchestrator.spec import load_sweep
from orchestrator.store import Store
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

FAKE_SWEEP = '''
"""Fake sweep: deterministic workers for orchestration tests."""
import hashlib, json, os, tempfile, time
from orchestrator.spec import Preset, Sweep

SLEEP = {sleep}

def _base(config):
    key = json.dumps([config["arch"], config["transform"], config["seed"], config["inference"]])
    return int(hashlib.sha256(key.encode()).hexdigest()[:6], 16) / 16**6 * 0.5

def fake_train(config, report=None):
    steps, every = config["max_steps"], config["eval_every"]
    start, best = 0, 0.0
    if config.get("resume_from"):
        with open(os.path.join(config["resume_from"], "state.json")) as f:
            st = json.load(f)
        start, best = st["step"], st["best"]
    diverge = config["inference"] == "nn_plus" and config["transform"] == "global_rotation"
    acc = best
    for s in range(start + every, steps + 1, every):
        time.sleep(SLEEP)
        if diverge and s >= every * 2:
            return dict(status="diverged", error="loss exploded", steps=s, best_test_acc=best,
                        test_acc=float("nan"), test_mse=float("nan"), train_acc=0.1)
        acc = _base(config) + 0.1 * s / steps
        best = max(best, acc)
        with tempfile.TemporaryDirectory(prefix="fake-ck-") as d:  # Tune copies it in report
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(dict(step=s, best=best), f)
            if report:
                report(dict(step=s, test_acc=acc, train_acc=1.0), d)
    return dict(status="completed", best_test_acc=best, test_acc=acc, test_mse=1 - acc,
                val_acc=acc, train_acc=1.0, steps=steps, eta0=0.5, resumed_from=start)

def square_tile(x, scale):
    return dict(k=np.asarray(x) * scale)

import numpy as np

def fake_kernel(config, report=None, map_tiles=None):
    xs = [np.arange(4.0) + i for i in range(3)]
    res = map_tiles(square_tile, [dict(x=x, scale=2.0) for x in xs])
    tot = float(sum(r["k"].sum() for r in res))
    acc = 0.3 + 0.01 * ["fcn", "lcn", "vec", "gap", "lap4", "lap8"].index(config["arch"])
    if report:
        report(dict(step=0, test_acc=acc), None)
    return dict(status="completed", best_test_acc=acc, test_acc=acc, test_mse=0.5,
                train_acc=1.0, steps=0, tile_sum=tot)

SWEEP = Sweep(
    name="fake",
    axes=dict(inference=["ntk", "nn", "nn_plus"], arch=["fcn", "vec"],
              transform=["identity", "permutation", "global_rotation"]),
    presets=dict(smoke=Preset(
        config=dict(dataset="synthetic", max_steps=40, eval_every=10, checkpoint_every=10),
        width=dict(fcn=8, vec=4), seeds=(0, 1), max_failures=2,
        resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)))),
    workers=dict(train=fake_train, kernel=fake_kernel),
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
'''


def write_fake(tmp: Path, sleep: float = 0.0, name: str = "fake_sweep.py") -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(FAKE_SWEEP).format(sleep=sleep))
    return p


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "JAX_PLATFORMS": "cpu"}})
    yield ray
    ray.shutdown()


def _rows(results: Path, sweep: str = "fake"):
    df, corrupt = Store(str(results), sweep).latest()
    assert corrupt == []
    return df.set_index("trial_id")


def test_sweep_runs_retries_from_checkpoint_and_records_divergence(ray_session, tmp_path):
    sw = load_sweep(write_fake(tmp_path))
    trials = sw.expand("smoke")
    victim = next(t for t in trials if t.kind == "train" and t.config["transform"] == "identity")
    res = tmp_path / "res"
    s = run_sweep(sw, "smoke", results=str(res), progress=False,
                  fault={"crash_at_step": 20, "trials": [victim.trial_id]})
    # 2 kernel computations are derived (fcn: 3 transforms -> 1), 24 finite runs
    assert s.total == 30 and s.kernel_cells == 6 and s.kernel_computations == 4
    assert s.launched == 28 and s.derived_written == 2 and s.failed == 0
    assert s.retries == 1
    df = _rows(res)
    assert len(df) == 30 and df.index.is_unique
    # the crashed trial: attempt 1 failed (its row kept in trials_all), attempt 2 completed
    # from the step-20 checkpoint with the same final metrics as an uninterrupted run
    v = df.loc[victim.trial_id]
    assert v["status"] == "completed" and v["attempt"] == 2
    import json

    assert json.loads(v["metrics_json"])["resumed_from"] == 20
    all_rows, _ = Store(str(res), "fake").read_trials_all()
    first = [r for r in all_rows.to_pylist() if r["trial_id"] == victim.trial_id
             and r["attempt"] == 1][0]
    assert first["status"] == "failed" and "InjectedFault" in first["error"]
    clean = sw.workers["train"](dict(victim.config))
    assert v["best_test_acc"] == pytest.approx(clean["best_test_acc"], abs=0)
    assert v["test_acc"] == pytest.approx(clean["test_acc"], abs=0)
    # diverging trials are recorded as such and the sweep finished
    div = df[(df["inference"] == "nn_plus") & (df["transform"] == "global_rotation")]
    assert len(div) == 4 and set(div["status"]) == {"diverged"}
    assert set(df.loc[df["status"] != "diverged", "status"]) == {"completed"}
    # derived kernel cells copy their source's numbers and name it
    der = df[df["derived_from"].notna()]
    assert len(der) == 2
    for _tid, r in der.iterrows():
        src = df.loc[r["derived_from"]]
        assert r["arch"] == src["arch"] == "fcn" and r["transform"] != src["transform"]
        assert r["best_test_acc"] == src["best_test_acc"]
    # tiles ran as Ray tasks and landed in the content-addressed cache
    tiles = list((res / "tiles").glob("*.npz"))
    assert len(tiles) == 3  # same 3 tile inputs in every kernel trial: computed once
    kern = df[(df["kind"] == "kernel") & df["derived_from"].isna()]
    assert all(json.loads(m)["tile_sum"] == 2.0 * sum(np.arange(4.0).sum() + 4 * i
                                                      for i in range(3))
               for m in kern["metrics_json"])
    # history and MLflow: one run per attempt (31 part files incl. the failed attempt)
    hist = Store(str(res), "fake").read_history()[0]
    assert hist.num_rows > 0
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{res}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("fake").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("symsweep.invocation") == "1"]
    runs = [r for r in runs if "trial_id" in r.data.tags]  # one parent per invocation
    assert len(runs) == 31 and len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    r = next(r for r in runs if r.data.tags["trial_id"] == victim.trial_id
             and r.data.tags["attempt"] == "2")
    assert r.data.tags["status"] == "completed" and r.data.tags["preset"] == "smoke"
    assert r.data.params["arch"] == victim.config["arch"]
    assert [m.step for m in c.get_metric_history(r.info.run_id, "test_acc")] == [30, 40]

    # re-running launches nothing and counts nothing twice
    s2 = run_sweep(sw, "smoke", results=str(res), progress=False)
    assert s2.launched == 0 and s2.skipped == 30 and s2.derived_written == 0
    assert len(_rows(res)) == 30


def test_second_driver_refused_and_stale_lock_taken_over(ray_session, tmp_path):
    sw = load_sweep(write_fake(tmp_path))
    res = tmp_path / "res"
    st = Store(str(res), "fake")
    lock, _ = st.acquire_lock()  # a live driver: this very process
    with pytest.raises(ConfigError, match=f"pid {os.getpid()} on host"):
        run_sweep(sw, "smoke", results=str(res), progress=False, tracking=False)
    st.release_lock(lock)
    # a dead driver's lock: a pid that has exited
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    st.fs.create_dir(st.dir, recursive=True)
    Path(st.lock_path).write_text(
        f'{{"host": "{__import__("socket").gethostname()}", "pid": {p.pid}, '
        '"started_at": "2026-01-01T00:00:00+00:00", "heartbeat": 0, "token": "x"}')
    s = run_sweep(sw, "smoke", results=str(res), progress=False, tracking=False,
                  only={"inference": ["ntk"], "arch": ["vec"]})
    assert any("stale lock" in n and str(p.pid) in n for n in s.notes)
    assert s.launched == 3 and not Path(st.lock_path).exists()


def test_killed_driver_resumes_only_missing_trials(ray_session, tmp_path, capsys):
    """SIGKILL the driver (a subprocess with its own embedded Ray) mid-sweep, resume: every
    finished trial is kept, none is counted twice, and the table equals an uninterrupted
    run's."""
    from orchestrator.figures.fig2 import fig2_cells

    sweep_file = write_fake(tmp_path, sleep=0.15)
    res = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the driver joins this module's Ray (as `--address auto` does on a cluster); Ray ends a
    # dead driver's trial actors and tasks with it
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, str(sweep_file), "--preset", "smoke", "--results", str(res),
         "--no-progress", "--no-report", "--address", address],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    st = Store(str(res), "fake")
    deadline = time.time() + 120
    while time.time() < deadline and len(st.parts()) < 8:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver (and anything it forked)
    proc.wait()
    time.sleep(2)  # let Ray reap the dead driver's trial actors
    n_before = len({p.trial_id for p in st.parts()})
    assert 8 <= n_before < 30, n_before
    before = _rows(res)
    from orchestrator.cli import main

    # `symsweep resume fake` (joins this module's Ray session): the dead driver's lock is
    # recognised as stale and said so
    assert main(["resume", "fake", "--sweep-file", str(sweep_file), "--results", str(res),
                 "--no-progress", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {proc.pid}" in err
    done_before = set(before.index[before["status"].isin(["completed", "diverged"])])
    import re

    skipped = int(re.search(r"(\d+) already finished", err.replace("\n", " ")).group(1))
    assert skipped >= len(done_before)
    after = _rows(res)
    assert len(after) == 30 and after.index.is_unique
    # finished trials were not re-run: their (only) attempt is the one from before the kill
    for tid in done_before:
        assert after.loc[tid, "attempt"] == before.loc[tid, "attempt"]
        assert after.loc[tid, "finished_at"] == before.loc[tid, "finished_at"]
    # the table equals that of an uninterrupted run
    ref = tmp_path / "ref"  # uninterrupted, in-process (no Ray): same workers, same numbers
    run_local(load_sweep(write_fake(tmp_path, name="fake_ref.py")), "smoke", results=str(ref))
    a = fig2_cells(after.reset_index(), 0.95)
    b = fig2_cells(_rows(ref).reset_index(), 0.95)
    assert a[["n_success", "n_finished"]].equals(b[["n_success", "n_finished"]])
    np.testing.assert_array_equal(a["mean"].to_numpy(), b["mean"].to_numpy())
    np.testing.assert_array_equal(a["std"].to_numpy(), b["std"].to_numpy())


def test_interrupted_driver_says_what_is_left_and_fails(ray_session, tmp_path):
    """Ctrl-C: the driver stops cleanly (orchestrator/stopping.py) and returns normally. It must
    not pass that off as a finished sweep: it names the unfinished trials, the resume command,
    and exits 130 (128 + SIGINT, the shell's convention for an interrupted command)."""
    sweep_file = write_fake(tmp_path, sleep=0.15)
    res = tmp_path / "interrupted"
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, str(sweep_file), "--preset", "smoke", "--results", str(res),
         "--no-progress", "--no-report", "--address", address],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    st = Store(str(res), "fake")
    deadline = time.time() + 120
    while time.time() < deadline and len(st.parts()) < 4:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    err = " ".join(err.split())
    assert "stopped by SIGINT" in err and "trials did not finish" in err
    assert f"symsweep resume fake --results {res}" in err
    assert not Path(st.lock_path).exists()  # the lock is released for the resume


def _tiny_kernel_sweep(archs: list[str]):
    from orchestrator.spec import Preset, Sweep

    return Sweep(name="tiny", axes=dict(
        inference=["ntk"], arch=archs,
        transform=["identity", "shared_rotation", "pixel_rotation", "permutation",
                   "global_rotation"]),
        presets=dict(smoke=Preset(config=dict(dataset="synthetic", image_size=8, train_size=64,
                                              val_size=0, test_size=64, depth=2))))


@pytest.mark.parametrize("archs", [
    ["fcn", "lcn", "vec", "gap"],
    pytest.param(["fcn", "lcn", "vec", "gap", "lap4", "lap8"], marks=pytest.mark.slow),
])
def test_dedupe_gives_identical_numbers_for_derived_cells(tmp_path, archs):
    """Real data + kernels, in-process: the grid computed with de-duplication (Theorem 4.1
    groups computed once) equals the grid with every cell computed."""
    sw = _tiny_kernel_sweep(archs)
    a, b = tmp_path / "dedupe", tmp_path / "all"
    run_local(sw, "smoke", results=str(a), dedupe=True)
    run_local(sw, "smoke", results=str(b), dedupe=False)
    da, db = _rows(a, "tiny"), _rows(b, "tiny")
    assert len(da) == len(db) == 5 * len(archs) and (da.index.sort_values() ==
                                                    db.index.sort_values()).all()
    derived = da[da["derived_from"].notna()]
    n_groups = 1 + 3 + 4 * (len(archs) - 3)
    assert len(derived) == 5 * len(archs) - n_groups
    assert db["derived_from"].isna().all()
    for tid, r in derived.iterrows():
        assert r["test_acc"] == db.loc[tid, "test_acc"]
        assert r["train_acc"] == db.loc[tid, "train_acc"]
        assert r["test_mse"] == pytest.approx(db.loc[tid, "test_mse"], rel=1e-5, abs=0)
    # and the groups are real: a pixel-rotated gap kernel is not the identity one
    g = db[db["arch"] == "gap"].set_index("transform")
    assert g.loc["pixel_rotation", "test_mse"] != pytest.approx(g.loc["identity", "test_mse"],
                                                                rel=1e-3)


def test_real_workers_end_to_end(ray_session, tmp_path, capsys):
    """The fig2 sweep file at the smoke preset, restricted to fcn x {identity, permutation}
    for NTK and NN: real data, kernels (tiles as Ray tasks) and SGD through Tune, then the
    table and the plot from the CLI."""
    from orchestrator.cli import main

    res = tmp_path / "res"
    sw = load_sweep(REPO / "sweeps" / "fig2.py")
    only = {"inference": ["ntk", "nn"], "arch": ["fcn"],
            "transform": ["identity", "permutation"]}
    s = run_sweep(sw, "smoke", results=str(res), progress=False, only=only)
    assert s.total == 12 and s.launched == 11 and s.derived_written == 1 and s.failed == 0
    df = _rows(res, "fig2")
    assert len(df) == 12 and set(df["status"]) <= {"completed", "diverged"}
    k = df[df["kind"] == "kernel"].set_index("transform")
    assert k.loc["permutation", "derived_from"] == df[(df["kind"] == "kernel") & (
        df["transform"] == "identity")].index[0]
    assert k.loc["permutation", "test_acc"] == k.loc["identity", "test_acc"]
    assert 0.2 < k.loc["identity", "test_acc"] <= 1.0  # 10 classes: well above chance
    nn = df[df["kind"] == "train"]
    assert (nn["steps"] > 0).all() and nn["eta0"].notna().all()
    assert list((res / "tiles").glob("*.npz"))
    assert main(["table", "fig2", "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert "NTK" in out and "(5/5)" in out
    assert main(["plot", "fig2", "--results", str(res)]) == 0
    assert (res / "fig2" / "fig2.png").stat().st_size > 10_000
