"""Crash recovery: a driver killed with SIGKILL leaves nothing half-done that a resume would
trust (MLflow runs), no process behind (Ray), and a driver that cannot keep its lock stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fault_helpers import attempt_row

from orchestrator.store import Store

ROOT = Path(__file__).resolve().parents[2]



# ====================================================================== MLflow after SIGKILL
KILLED_MID_LOG = textwrap.dedent('''
    import os, signal, sys
    from mlflow.tracking import MlflowClient
    from orchestrator.store import Store
    from orchestrator.tracking import Tracker
    real = MlflowClient.log_batch
    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:  # the driver dies by SIGKILL right when it logs the metrics
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)
    MlflowClient.log_batch = log_batch
    Tracker(Store(sys.argv[1], "s")).sync()
''')


def test_mlflow_run_of_a_killed_driver_is_mirrored_again(tmp_path, caplog):
    """SIGKILL while a run is logged left it RUNNING with no metrics, and resume counted it as
    mirrored forever. Now it is deleted and mirrored again, completely, once."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.95})
    st.write_attempt(attempt_row("a"),
                     [{"step": 5, "test_acc": 0.25}, {"step": 10, "test_acc": 0.5}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", KILLED_MID_LOG, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("s").experiment_id
    (half,) = c.search_runs([exp])
    assert half.info.status == "RUNNING" and not half.data.metrics  # what the kill left
    tr = Tracker(st)  # the resumed driver's mirror
    with caplog.at_level("WARNING", logger="symsweep"):
        assert tr.sync() == 1 and tr.repaired_runs == 1
    assert "left half-logged" in caplog.text and half.info.run_id in caplog.text
    (run,) = c.search_runs([exp])  # one run per attempt: nothing twice, nothing lost
    assert run.info.run_id != half.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["symsweep.mirrored"] == "1"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "test_acc")] == \
        [(5, 0.25), (10, 0.5)]
    assert Tracker(st).sync() == 0  # a complete run is not mirrored again
    # one definition of success: the preset's threshold (0.95; 0.97 reached), as in the tables
    assert run.data.tags["success"] == "true"


# ====================================================================== heartbeat
def _tiny_sweep():
    from orchestrator.spec import Preset, Sweep

    def train(config, report=None):
        return {"status": "completed", "test_acc": 0.5, "train_acc": 1.0}

    return Sweep(name="hb", axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
                 presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=1),
                                           width=dict(vec=4), seeds=(0,),
                                           resources=dict(train=dict(cpu=1)))),
                 workers=dict(train=train))


def _fake_tune(on_start=None):
    """Stands in for Tune: runs until SIGINT, then returns (Tune's clean stop on SIGINT)."""
    import signal
    import threading

    def run(sweep, todo, trials, ctx, store, summary, *a, **kw):
        stopped = threading.Event()
        old = signal.signal(signal.SIGINT, lambda *_: stopped.set())
        try:
            t_end = time.monotonic() + 20  # a bound, not a timing
            while not stopped.is_set():
                assert time.monotonic() < t_end, "the sweep was never stopped"
                if on_start is not None:  # again and again: a heartbeat that read the lock
                    on_start(store)       # just before may write its own back over it
                stopped.wait(0.1)
        finally:
            signal.signal(signal.SIGINT, old)

    return run


def _hb_setup(monkeypatch, tmp_path, on_start=None):
    from orchestrator import runner

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(runner, "LOCK_STALE_S", 0.3)
    monkeypatch.setattr(runner, "ensure_ray", lambda *a, **k: False)
    monkeypatch.setattr(runner, "_run_tune", _fake_tune(on_start))
    st = Store(str(tmp_path), "hb")
    st.write_attempt(attempt_row("earlier"), [{"step": 1, "test_acc": 0.5}])  # must survive
    return runner


def test_heartbeat_failures_are_loud_and_stop_the_sweep(tmp_path, monkeypatch, caplog):
    """A live driver that cannot refresh its lock (expired credentials) said nothing and ran
    on unprotected; now each failure is logged, and near the stale time the sweep stops with
    one clear error. Nothing finished is lost, the lock is released."""
    import pytest

    runner = _hb_setup(monkeypatch, tmp_path)

    def denied(self, lock):
        raise PermissionError("[Errno 13] Permission denied: 'driver.lock' (expired credentials)")

    monkeypatch.setattr(Store, "heartbeat", denied)
    with caplog.at_level("ERROR", logger="symsweep"), \
            pytest.raises(runner.LockLostError) as ei:
        runner.run_sweep(_tiny_sweep(), "smoke", results=str(tmp_path), progress=False,
                         tracking=False)
    msg = str(ei.value)
    assert "\n" not in msg and "sweep 'hb' stopped" in msg and "could not be refreshed" in msg
    assert "expired credentials" in msg and "symsweep resume" in msg
    fails = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(fails) >= 2 and "1 in a row" in fails[0].getMessage()
    st = Store(str(tmp_path), "hb")
    assert list(st.latest()[0]["trial_id"]) == ["earlier"] and st.read_lock() is None


def test_lock_taken_over_stops_the_sweep_at_once(tmp_path, monkeypatch):
    """Another driver holding this sweep's lock: stop, name it, leave its lock alone."""
    import pytest

    def steal(store):
        other = {"host": "elsewhere", "pid": 4242, "token": "other-driver"}
        with store.fs.open_output_stream(store.lock_path) as f:
            f.write(json.dumps(other).encode())

    runner = _hb_setup(monkeypatch, tmp_path, on_start=steal)
    with pytest.raises(runner.LockLostError, match="another driver took its lock over "
                       r"\(pid 4242 on host elsewhere\)"):
        runner.run_sweep(_tiny_sweep(), "smoke", results=str(tmp_path), progress=False,
                         tracking=False)
    assert Store(str(tmp_path), "hb").read_lock()["token"] == "other-driver"


# ====================================================================== Ray after kill -9
K9_SWEEP = textwrap.dedent('''
    import os, time
    from orchestrator.spec import Preset, Sweep

    def train(config, report=None):
        open(os.path.join(os.environ["K9_DIR"], "started"), "w").close()
        time.sleep(600)
        return {"status": "completed", "test_acc": 0.5, "train_acc": 1.0}

    SWEEP = Sweep(name="k9", axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
                  presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=1),
                                            width=dict(vec=4), seeds=(0,),
                                            resources=dict(train=dict(cpu=1)))),
                  workers=dict(train=train))
''')
K9_DRIVER = textwrap.dedent('''
    import sys
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep
    run_sweep(load_sweep(sys.argv[1]), "smoke", results=sys.argv[2], progress=False,
              tracking=False, num_cpus=1)
''')


def test_kill_9_of_the_driver_leaves_no_ray_process(tmp_path):
    """kill -9 of a driver with a running trial: every process it started (Ray's GCS, raylet,
    agents, the trial's worker) is gone within a bounded wait (the two agents outlived it,
    ignoring SIGTERM, for about a minute); the sweep can be resumed (lock of a dead driver)."""
    import signal
    import time

    import psutil

    (tmp_path / "k9_sweep.py").write_text(K9_SWEEP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "K9_DIR": str(tmp_path)}
    drv = subprocess.Popen([sys.executable, "-c", K9_DRIVER, str(tmp_path / "k9_sweep.py"),
                            str(tmp_path / "res")], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs: list[psutil.Process] = []
    try:
        while not (tmp_path / "started").exists():  # the trial runs inside Ray
            assert drv.poll() is None, drv.stderr.read()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # let the reaper see every process once
        procs = psutil.Process(drv.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in procs)
        assert "raylet" in names and "ray::" in names, names  # what this test is about
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(timeout=60)
        _, alive = psutil.wait_procs(procs, timeout=40)  # a bound, not a speed claim
        assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
    finally:
        for p in procs:  # never leak Ray processes from a failing test
            try:
                p.kill()
            except psutil.Error:
                pass
        if drv.poll() is None:
            drv.kill()
    st = Store(str(tmp_path / "res"), "k9")
    assert st.read_lock()["pid"] == drv.pid  # left by the killed driver ...
    lock, note = st.acquire_lock()  # ... and taken over by the next one: nothing blocks resume
    assert "took over a stale lock of a dead driver" in note
    st.release_lock(lock)
