"""Stopping a sweep cleanly (orchestrator/stopping.py): `symsweep stop`, SIGTERM, SIGINT and
SIGUSR1 to the driver (issue 29, items 2 and 3).

Unit cases (no Ray): the exit codes, the signal handlers (a second signal stops at once), a
stale stop request ignored, `symsweep stop` with no driver, and one attempt of the real SGD
worker stopped between steps: it writes a checkpoint of that step, is recorded as interrupted,
and the next attempt continues from it to the uninterrupted result, bit for bit.

End to end: a driver (the sweep file run as a script, as `ray submit` does) whose two trials,
the real SGD and kernel workers on 8x8 data, are held mid-way (a hold file: the SGD run after
its evaluation at step 10, before its first checkpoint; the kernel cell after two tiles) until
a stop arrives. It is stopped by `symsweep stop` or by SIGTERM; it exits with 130 / 143, both
attempts recorded as interrupted (none failed), the lock and the request removed; `symsweep
resume` then finishes both with the rows of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrator.context import RunContext
from orchestrator.layout import ResultsLayout
from orchestrator.spec import Preset, Sweep, Trial
from orchestrator.stopping import (
    STOP_FILE,
    StopControl,
    StopNow,
    StopProbe,
    exit_code_for,
    read_stop,
    request_stop,
)
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[2]
METRICS = ("best_test_acc", "test_acc", "test_mse", "train_acc", "steps")
TINY = dict(dataset="synthetic", image_size=8, train_size=64, val_size=0, test_size=64,
            depth=2, max_steps=60, eval_every=10, checkpoint_every=30, batch_size=16,
            eta0_samples=16, eta0_inits=1, early_stop_train_acc=2.0, tile_side=32)


# ====================================================================== unit
def test_exit_codes_are_the_shells_for_each_signal():
    assert exit_code_for("SIGINT") == 130
    assert exit_code_for("SIGTERM") == 143
    assert exit_code_for("SIGUSR1") == 128 + signal.SIGUSR1
    assert exit_code_for("symsweep stop") == 130


def test_first_signal_requests_a_stop_the_second_stops_at_once(tmp_path):
    (tmp_path / "s").mkdir()
    c = StopControl(ResultsLayout(str(tmp_path), "s"), "tok", grace_s=5)
    c._on_signal(signal.SIGTERM, None)
    assert c.requested and c.by == "SIGTERM" and c.exit_code == 143
    assert read_stop(ResultsLayout(str(tmp_path), "s"))["token"] == "tok"  # the trials see it
    assert StopProbe(ResultsLayout(str(tmp_path), "s"), "tok")() is True
    assert StopProbe(ResultsLayout(str(tmp_path), "s"), "another driver")() is False
    with pytest.raises(StopNow) as ex:
        c._on_signal(signal.SIGINT, None)
    assert ex.value.exit_code == 130


def test_should_end_waits_for_the_trials_in_flight_then_the_grace(tmp_path):
    c = StopControl(ResultsLayout(str(tmp_path), "s"), "tok", grace_s=0.3)
    running = [2]
    assert not c.should_end(lambda: running[0])  # nothing requested
    c.request("SIGUSR1")
    assert not c.should_end(lambda: running[0])  # two trials still checkpointing
    running[0] = 0
    assert c.should_end(lambda: running[0])
    c2 = StopControl(ResultsLayout(str(tmp_path), "s"), "tok", grace_s=0.3)
    c2.request("SIGTERM")
    time.sleep(0.4)
    assert c2.should_end(lambda: 1)  # the grace is over: the driver ends them
    c3 = StopControl(ResultsLayout(str(tmp_path), "s"), "tok", grace_s=99)
    c3.aborted = "lock lost"
    assert c3.should_end(lambda: 5)  # a lost lock never waits


def test_stop_command_picks_up_a_request_naming_this_driver_only(tmp_path):
    (tmp_path / "s").mkdir()
    c = StopControl(ResultsLayout(str(tmp_path), "s"), "mine", grace_s=5)
    request_stop(ResultsLayout(str(tmp_path), "s"), "an earlier driver's", "symsweep stop")
    assert not c.poll()
    request_stop(ResultsLayout(str(tmp_path), "s"), "mine", "symsweep stop")
    c._next_poll = 0.0
    assert c.poll() and c.by == "symsweep stop" and c.exit_code == 130


def test_stop_without_a_running_driver_is_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    (tmp_path / "res" / "fig2").mkdir(parents=True)
    assert main(["stop", "fig2", "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no running driver" in err and "nothing to stop" in err
    assert not (tmp_path / "res" / "fig2" / STOP_FILE).exists()  # nothing written
    # a lock of a dead driver is no running driver either
    (tmp_path / "res" / "fig2" / "driver.lock").write_text(json.dumps(
        {"host": os.uname().nodename, "pid": 2 ** 22 + 12345, "token": "t", "heartbeat": 0}))
    assert main(["stop", "fig2", "--results", str(tmp_path / "res")]) == 2
    assert "which has ended" in capsys.readouterr().err
    # bad input: one line each, exit 2, nothing written
    for argv, says in ((["stop", "fgi2"], "no sweep 'fgi2' under"),
                       (["stop", "sweeps/fig2.py"], "expected a name like fig2"),
                       (["stop", "fig2", "--timeout", "5"], "only with --wait"),
                       (["stop", "fig2", "--wait", "--timeout", "-1"], "seconds >= 0")):
        assert main([*argv, "--results", str(tmp_path / "res")]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (argv, err)
    assert not (tmp_path / "res" / "fig2" / STOP_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["fig2"]


def _ctx(root: Path, token: str | None) -> RunContext:
    return RunContext(sweep="st", preset="smoke", results=str(root), code_version="test",
                      driver_token=token)


def test_sgd_attempt_stopped_between_steps_continues_bit_for_bit(tmp_path):
    """The stop arrives at the evaluation of step 10, before the first checkpoint (30): the
    attempt checkpoints step 20 itself (off the schedule), is recorded as interrupted, and the
    next attempt resumes there with the uninterrupted result."""
    from orchestrator.trial import execute_trial
    from workers.train import train

    trial = Trial("st0", "train", dict(TINY, inference="nn", arch="fcn", transform="identity",
                                        width=16, seed=0), {"cpu": 1})
    ref = execute_trial(trial, _ctx(tmp_path / "ref", None), train)

    root = tmp_path / "res"

    def stop_at_first_report(config, report, should_stop):
        assert isinstance(should_stop, StopProbe) and should_stop.token == "tok"

        def rep(metrics, ckpt=None):
            report(metrics, ckpt)
            if metrics.get("step") == 10:  # as `symsweep stop` would, mid-run
                request_stop(ResultsLayout(str(root), "st"), "tok", "symsweep stop")
        # the same probe without its once-a-second rate limit (this run takes less)
        probe = StopProbe(ResultsLayout(str(root), "st"), "tok", every_s=0)
        return train(config, rep, should_stop=probe)

    first = execute_trial(trial, _ctx(root, "tok"), stop_at_first_report)
    assert first["status"] == "interrupted" and "step 20" in first["error"]
    (root / "st" / STOP_FILE).unlink()
    second = execute_trial(trial, _ctx(root, "tok"), train)
    rows = Store(str(root), "st").read_trials_all()[0].to_pandas().sort_values("attempt")
    assert list(rows["status"]) == ["interrupted", "completed"]
    assert list(rows["start_step"]) == [0, 20]
    for m in ("best_test_acc", "test_acc", "test_mse", "train_acc", "steps"):
        assert second[m] == ref[m], m
    assert Store(str(root), "st").done_ids() == {"st0"}  # counted once


def test_a_stale_request_of_an_earlier_driver_does_not_stop_a_new_run(tmp_path, capsys,
                                                                     caplog):
    from orchestrator.runner import run_sweep

    sweep = Sweep(name="st", axes=dict(inference=["nngp"], arch=["fcn"], transform=["identity"]),
                  presets=dict(smoke=Preset(config=TINY, width=dict(fcn=16), seeds=(0,),
                                            resources=dict(kernel=dict(cpu=1)))))
    (tmp_path / "st").mkdir()
    request_stop(ResultsLayout(str(tmp_path), "st"), "a driver long gone", "SIGTERM")
    s = run_sweep(sweep, "smoke", results=str(tmp_path), progress=False, tracking=False,
                  num_cpus=1)
    assert s.completed == 1 and s.stopped_by is None and s.exit_code == 0
    assert not (tmp_path / "st" / STOP_FILE).exists()

    # signals during the driver's clean-up only log: it still releases its lock (the default
    # action would have left it, stale for 10 minutes to a driver on another host)
    orig = Store.release_lock
    sent = []

    def release_under_signals(self, lock):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            os.kill(os.getpid(), sig)
            sent.append(sig)
        return orig(self, lock)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Store, "release_lock", release_under_signals)
        again = run_sweep(sweep, "smoke", results=str(tmp_path), progress=False,
                          tracking=False, num_cpus=1)
    assert len(sent) == 3 and again.skipped == 1 and again.exit_code == 0
    assert not (tmp_path / "st" / "driver.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the driver's handlers are gone again
    assert sum("during the driver's clean-up" in r.getMessage() for r in caplog.records) == 3

    # `status` says when the live driver was asked to stop (this process stands in for it)
    from orchestrator.cli import main

    (tmp_path / "st" / "driver.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "token": "live", "heartbeat": 0}))
    request_stop(ResultsLayout(str(tmp_path), "st"), "live", "symsweep stop")
    capsys.readouterr()
    assert main(["status", "st", "--results", str(tmp_path)]) == 0
    assert "stopping: asked by symsweep stop" in capsys.readouterr().out


# ====================================================================== end to end
HELD_SWEEP = '''\
"""Two trials (SGD, kernel) that, while the file HOLD exists, wait mid-way for a stop."""
import os, time
from orchestrator.spec import Preset, Sweep

HOLD = {hold!r}

def _wait(kind, should_stop):
    open(f"{{HOLD}}.{{kind}}.reached", "w").close()
    while not should_stop():
        time.sleep(0.05)

def held_train(config, report=None, should_stop=None):
    from workers.train import train
    held = os.path.exists(HOLD)

    def rep(metrics, checkpoint_dir=None):
        report(metrics, checkpoint_dir)
        if held and metrics.get("step") == 10:  # evaluated, before the first checkpoint (30)
            _wait("train", should_stop)

    return train(config, rep, should_stop=should_stop)

def held_kernel(config, report=None, map_tiles=None, should_stop=None):
    from workers.kernel_trial import run_kernel_trial
    held = os.path.exists(HOLD)
    done = [0]

    def one_by_one(fn, kwargs_list):
        out = []
        for kw in kwargs_list:
            out.extend(map_tiles(fn, [kw]))
            done[0] += 1
            if held and done[0] == 2:
                _wait("kernel", should_stop)
        return out

    return run_kernel_trial(config, report, map_tiles=one_by_one)

SWEEP = Sweep(
    name="held",
    axes=dict(inference=["ntk", "nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(config={tiny!r}, width=dict(fcn=16), seeds=(0,), max_failures=0,
                              resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)))),
    workers=dict(train=held_train, kernel=held_kernel),
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
'''


def write_held_sweep(tmp: Path) -> tuple[Path, Path]:
    """The held sweep file and its hold file (create it to hold the trials) under ``tmp``."""
    hold = tmp / "held.hold"
    p = tmp / "held.py"
    p.write_text(textwrap.dedent(HELD_SWEEP).format(hold=str(hold), tiny=TINY))
    return p, hold


@pytest.fixture(scope="module")
def reference(ray_env, tmp_path_factory):
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    tmp = tmp_path_factory.mktemp("ref")
    p, _ = write_held_sweep(tmp)
    s = run_sweep(load_sweep(str(p)), "smoke", results=str(tmp / "res"), progress=False,
                  tracking=False)
    assert s.failed == 0 and s.completed == 2
    return Store(str(tmp / "res"), "held").latest()[0].set_index("kind")


def _stop_by_command(proc: subprocess.Popen, res: Path) -> None:
    from orchestrator.cli import main

    assert main(["stop", "held", "--results", str(res)]) == 0


def _stop_by_sigterm(proc: subprocess.Popen, res: Path) -> None:
    proc.send_signal(signal.SIGTERM)  # what scancel and a preemption send


def _stop_by_sigusr1(proc: subprocess.Popen, res: Path) -> None:
    proc.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@... ahead of the wall time


def _stop_by_sigint(proc: subprocess.Popen, res: Path) -> None:
    proc.send_signal(signal.SIGINT)  # Ctrl-C


@pytest.mark.parametrize(("stop", "code"), [(_stop_by_command, 130), (_stop_by_sigterm, 143),
                                            (_stop_by_sigusr1, 138), (_stop_by_sigint, 130)],
                         ids=["symsweep-stop", "SIGTERM", "SIGUSR1", "SIGINT"])
def test_running_driver_stops_cleanly_and_resume_finishes(ray_env, reference, tmp_path, capsys,
                                                          stop, code):
    from orchestrator.cli import main

    sweep_file, hold = write_held_sweep(tmp_path)
    res = tmp_path / "res"
    hold.write_text("hold")
    proc = subprocess.Popen(
        [sys.executable, str(sweep_file), "--preset", "smoke", "--results", str(res),
         "--no-progress", "--no-report", "--address", ray_env],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    reached = [Path(f"{hold}.train.reached"), Path(f"{hold}.kernel.reached")]
    t0 = time.monotonic()
    while not all(r.exists() for r in reached):
        assert proc.poll() is None, "".join(out)
        assert time.monotonic() - t0 < 240, "the trials never reached their hold"
        time.sleep(0.1)
    stop(proc, res)
    assert proc.wait(timeout=180) == code, "".join(out)
    reader.join(5)
    text = "".join(out)
    assert "stopped by" in text and "recorded as interrupted" in text, text
    assert "Traceback" not in text and "SIGTERM received" not in text, text

    st = Store(str(res), "held")
    rows = st.read_trials_all()[0].to_pandas()
    assert sorted(rows["status"]) == ["interrupted", "interrupted"], rows[["kind", "error"]]
    assert not (res / "held" / "driver.lock").exists()
    assert not (res / "held" / STOP_FILE).exists()
    assert st.running_markers() == {}
    capsys.readouterr()
    # an interrupted trial has no result yet: tables and figures leave it out
    assert main(["table", "held", "--results", str(res)]) == 2
    assert "no finished trials" in capsys.readouterr().err

    hold.unlink()
    capsys.readouterr()
    assert main(["resume", "held", "--results", str(res), "--sweep-file", str(sweep_file),
                 "--no-progress", "--no-report"]) == 0
    df = st.latest()[0].set_index("kind")
    assert set(df["status"]) == {"completed"}
    assert df.loc["train", "start_step"] == 20  # the checkpoint the stop wrote (off schedule)
    for m in METRICS:  # bit for bit
        assert df.loc["train", m] == reference.loc["train", m], m
    k = json.loads(df.loc["kernel", "metrics_json"])
    assert k["tiles_cached"] >= 2  # the tiles computed before the stop
    assert df.loc["kernel", "test_acc"] == reference.loc["kernel", "test_acc"]
    assert len(st.read_trials_all()[0]) == 4  # two attempts each, one finished each
