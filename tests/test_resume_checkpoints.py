"""Trial-keyed checkpoints (orchestrator/checkpoints.py): every later attempt of a finite trial
continues from its latest complete checkpoint, whoever wrote it.

Unit tests of the store (atomicity, corrupt-latest fallback, removal, keep_checkpoints), then
end to end with the real SGD and kernel workers on 8x8 synthetic data: a driver is SIGKILLed
(its whole process group) while its trials sit past a checkpoint, and (a) `symsweep resume` or
(b) re-running the sweep file (as `ray submit` does) finishes them; the finite trial resumes
from the checkpoint (start_step > 0, no step re-run) with the final metrics of an uninterrupted
run, bit for bit, and the kernel cell recomputes only the tiles missing from the tile cache.

The trials are held (not timed): a wrapper in the sweep file, while a "hold" file exists, stops
the first attempt for good right after a checkpoint (train) or after two tiles (kernel) and
says so with a ".reached" file; the test polls for that and the checkpoint's manifest, kills.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.checkpoints import MANIFEST, TrialCheckpoints, clear_tune_state
from orchestrator.context import RunContext
from orchestrator.layout import ResultsLayout
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[1]


# ====================================================================== unit: the store
def _write_dir(d: Path, step: int, payload: bytes = b"") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.bin").write_bytes(payload or f"state at {step}".encode() * 100)
    (d / "meta.json").write_text(json.dumps({"step": step}))
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "extra.txt").write_text(f"nested {step}")
    return d


def _ck(tmp_path: Path, keep: int = 2) -> TrialCheckpoints:
    return TrialCheckpoints(ResultsLayout(str(tmp_path / "res"), "sw"), "t0", keep=keep)


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_save_and_restore_round_trip_keeps_the_newest(tmp_path, uri):
    """Also through a URI root (pyarrow's filesystem from the URI, as for s3:// / gs://)."""
    ck = (TrialCheckpoints(ResultsLayout(f"file://{tmp_path}/res", "sw"), "t0", keep=2) if uri
          else _ck(tmp_path, keep=2))
    for s in (10, 20, 30):
        ck.save(str(_write_dir(tmp_path / f"w{s}", s)), s)
    assert ck.complete_steps() == [20, 30]  # keep=2: the oldest is gone
    dest = tmp_path / "dest"
    dest.mkdir()
    got, warns = ck.restore_latest(str(dest))
    assert got is not None and got.step == 30 and warns == []
    assert (dest / "state.bin").read_bytes() == (tmp_path / "w30" / "state.bin").read_bytes()
    assert (dest / "sub" / "extra.txt").read_text() == "nested 30"
    assert not (dest / MANIFEST).exists()
    # a trial without checkpoints: nothing, quietly
    other = TrialCheckpoints(ResultsLayout(str(tmp_path / "res"), "sw"), "other")
    none, warns = other.restore_latest(str(dest))
    assert none is None and warns == []


def test_checkpoint_without_its_manifest_is_skipped(tmp_path, caplog):
    """A writer killed before the manifest leaves files but no manifest: never loaded."""
    ck = _ck(tmp_path)
    ck.save(str(_write_dir(tmp_path / "w10", 10)), 10)
    p = Path(ck.save(str(_write_dir(tmp_path / "w20", 20)), 20))
    (p / MANIFEST).unlink()  # as if killed between the files and the manifest
    assert ck.complete_steps() == [10]
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.INFO, logger="symsweep"):
        got, warns = ck.restore_latest(str(dest))
    assert got is not None and got.step == 10 and warns == []
    assert (dest / "meta.json").read_text() == json.dumps({"step": 10})
    # the next complete save removes the dead write below it
    ck.save(str(_write_dir(tmp_path / "w30", 30)), 30)
    assert not p.exists() and ck.complete_steps() == [10, 30]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "missing_file", "bad_manifest"])
def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(tmp_path, caplog, damage):
    ck = _ck(tmp_path)
    ck.save(str(_write_dir(tmp_path / "w10", 10)), 10)
    p = Path(ck.save(str(_write_dir(tmp_path / "w20", 20)), 20))
    f = p / "state.bin"
    if damage == "flip_byte":
        b = bytearray(f.read_bytes())
        b[5] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-3])
    elif damage == "missing_file":
        (p / "sub" / "extra.txt").unlink()
    else:
        (p / MANIFEST).write_text("{not json")
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        got, warns = ck.restore_latest(str(dest))
    assert got is not None and got.step == 10
    assert (dest / "meta.json").read_text() == json.dumps({"step": 10})
    assert len(warns) == 1 and "step 20" in warns[0] and "corrupt" in warns[0]
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert not p.exists()  # deleted: a later write of step 20 cannot be shadowed by it
    assert ck.complete_steps() == [10]


def test_every_checkpoint_corrupt_starts_from_zero_loudly(tmp_path):
    ck = _ck(tmp_path)
    p = Path(ck.save(str(_write_dir(tmp_path / "w10", 10)), 10))
    (p / "state.bin").write_bytes(b"garbage")
    dest = tmp_path / "dest"
    dest.mkdir()
    got, warns = ck.restore_latest(str(dest))
    assert got is None and len(warns) == 2 and "starting from step 0" in warns[1]


def test_keep_zero_keeps_all(tmp_path):
    ck = _ck(tmp_path, keep=0)
    for s in (1, 2, 3, 4):
        ck.save(str(_write_dir(tmp_path / f"w{s}", s)), s)
    assert ck.complete_steps() == [1, 2, 3, 4]
    ck.remove_all()
    assert ck.complete_steps() == [] and not Path(ck.dir).exists()


FAKE_TRAIN_SWEEP = '''
import json, os, tempfile
from orchestrator.spec import Preset, Sweep

def fake_train(config, report=None):
    start = 0
    if config.get("resume_from"):
        with open(os.path.join(config["resume_from"], "s.json")) as f:
            start = json.load(f)["step"]
    for s in range(start + 10, config["max_steps"] + 1, 10):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "s.json"), "w") as f:
                json.dump(dict(step=s), f)
            report(dict(step=s, test_acc=0.5), d)
    return dict(status=STATUS, steps=config["max_steps"], test_acc=0.5, resumed_from=start)

SWEEP = Sweep(name="ft", axes=dict(inference=["nn"], arch=["fcn"], transform=["identity"]),
              presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=30,
                                                    eval_every=10, checkpoint_every=10{keep}),
                                        width=dict(fcn=4), seeds=(0,))),
              workers=dict(train=fake_train))
'''


@pytest.mark.parametrize("status,keep,left", [("completed", None, False),
                                              ("diverged", None, False),
                                              ("completed", 0, True)])
def test_finished_trial_checkpoints_removed_unless_keep_checkpoints_0(tmp_path, status, keep,
                                                                      left):
    """execute_trial (no Ray): checkpoints go to the trial-keyed store while the trial runs
    and are removed when it finishes, unless keep_checkpoints=0; a failed attempt keeps them
    and the next attempt starts where it stopped (start_step in its row)."""
    from orchestrator.runner import run_local
    from orchestrator.spec import load_sweep
    from orchestrator.trial import execute_trial

    p = tmp_path / "ft.py"
    src = textwrap.dedent(FAKE_TRAIN_SWEEP).format(
        keep="" if keep is None else f", keep_checkpoints={keep}")
    p.write_text(src.replace("STATUS", repr(status)))
    sw = load_sweep(str(p))
    (trial,) = sw.expand("smoke")
    res = tmp_path / "res"
    ctx = RunContext(sweep="ft", preset="smoke", results=str(res),
                     fault={"crash_at_step": 20, "trials": None})
    with pytest.raises(Exception, match="injected crash at step 20"):
        execute_trial(trial, ctx, sw.workers["train"])
    ck = TrialCheckpoints(ResultsLayout(str(res), "ft"), trial.trial_id, keep=0)
    assert ck.complete_steps() == [10, 20]  # the failed attempt keeps them
    run_local(sw, "smoke", results=str(res))
    rows = Store(str(res), "ft").read_trials_all()[0].to_pylist()
    assert [(r["attempt"], r["status"], r["start_step"]) for r in rows] == [
        (1, "failed", 0), (2, status, 20)]
    assert json.loads(rows[1]["metrics_json"])["resumed_from"] == 20
    assert bool(ck.complete_steps()) is left
    assert Path(ck.dir).exists() is left


def test_attempt_after_a_corrupt_latest_checkpoint_resumes_from_the_previous(tmp_path):
    """The fallback is on record: the attempt's row starts at the previous checkpoint and its
    metrics_json carries the warning (the driver prints it as a note)."""
    from orchestrator.runner import run_local
    from orchestrator.spec import load_sweep
    from orchestrator.trial import execute_trial

    p = tmp_path / "ft.py"
    p.write_text(textwrap.dedent(FAKE_TRAIN_SWEEP).format(keep="").replace("STATUS",
                                                                          "'completed'"))
    sw = load_sweep(str(p))
    (trial,) = sw.expand("smoke")
    res = tmp_path / "res"
    ctx = RunContext(sweep="ft", preset="smoke", results=str(res),
                     fault={"crash_at_step": 20, "trials": None})
    with pytest.raises(Exception, match="injected crash"):
        execute_trial(trial, ctx, sw.workers["train"])
    ck = TrialCheckpoints(ResultsLayout(str(res), "ft"), trial.trial_id)
    latest = sorted(Path(ck.dir).iterdir())[-1]
    (latest / "s.json").write_text('{"step": 99}')  # same size class, wrong content
    run_local(sw, "smoke", results=str(res))
    row = Store(str(res), "ft").latest()[0].iloc[0]
    assert row["status"] == "completed" and row["start_step"] == 10
    m = json.loads(row["metrics_json"])
    assert m["resumed_from"] == 10 and "step 20" in m["checkpoint_warnings"]


def test_negative_keep_checkpoints_is_refused(tmp_path):
    """At expansion, before anything runs (the range table), and by the checkpoint store
    itself for a trial config built by hand (it then gets its failed row)."""
    from orchestrator.spec import Trial, load_sweep
    from orchestrator.trial import execute_trial
    from workers.errors import ConfigError

    p = tmp_path / "ft.py"
    p.write_text(textwrap.dedent(FAKE_TRAIN_SWEEP).format(keep=", keep_checkpoints=-1")
                 .replace("STATUS", "'completed'"))
    sw = load_sweep(str(p))
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 0, got -1"):
        sw.expand("smoke")
    ok = tmp_path / "ok.py"
    ok.write_text(textwrap.dedent(FAKE_TRAIN_SWEEP).format(keep="")
                  .replace("STATUS", "'completed'"))
    (good,) = load_sweep(str(ok)).expand("smoke")
    trial = Trial(good.trial_id, good.kind, {**good.config, "keep_checkpoints": -1},
                  good.resources)
    res = tmp_path / "res"
    ctx = RunContext(sweep="ft", preset="smoke", results=str(res))
    with pytest.raises(ConfigError, match="keep_checkpoints=-1: use N >= 1"):
        execute_trial(trial, ctx, sw.workers["train"])
    (row,) = Store(str(res), "ft").read_trials_all()[0].to_pylist()
    assert row["status"] == "failed" and "keep_checkpoints=-1" in row["error"]


def test_clear_tune_state(tmp_path):
    d = tmp_path / "res" / "sw" / "_tune"
    (d / "smoke-1-2" / "t").mkdir(parents=True)
    (d / "smoke-3-4").mkdir()
    (d / "stray.json").write_text("{}")
    assert clear_tune_state(ResultsLayout(str(tmp_path / "res"), "sw")) == 3
    assert list(d.iterdir()) == []
    assert clear_tune_state(ResultsLayout(str(tmp_path / "nothing"), "sw")) == 0


# ====================================================================== end to end
HELD_SWEEP = '''
"""Tiny real sweep: one SGD run (nn, fcn) and one NTK cell on 8x8 synthetic data. While the
file HOLD exists, the first attempt of each trial stops for good at a checkpoint (train) or
after two tiles (kernel), and says so in HOLD.<kind>.reached."""
import os, time
from orchestrator.spec import Preset, Sweep

HOLD = {hold!r}
HOLD_STEP = 40

def _hold(kind):
    open(f"{{HOLD}}.{{kind}}.reached", "w").close()
    while True:  # never wakes: only the SIGKILL of the driver ends it
        time.sleep(3600)

def held_train(config, report=None):
    from workers.train import train
    held = os.path.exists(HOLD)

    def rep(metrics, checkpoint_dir=None):
        if report is not None:
            report(metrics, checkpoint_dir)  # the runner has stored the checkpoint on return
        if held and checkpoint_dir and metrics.get("step", 0) >= HOLD_STEP:
            _hold("train")

    return train(config, rep)

def held_kernel(config, report=None, map_tiles=None):
    from workers.kernel_trial import run_kernel_trial
    held = os.path.exists(HOLD)
    done = [0]

    def one_by_one(fn, kwargs_list):  # same tiles, one at a time, so a hold is between tiles
        out = []
        for kw in kwargs_list:
            out.extend(map_tiles(fn, [kw]))
            done[0] += 1
            if held and done[0] >= 2:
                _hold("kernel")
        return out

    return run_kernel_trial(config, report, map_tiles=one_by_one)

SWEEP = Sweep(
    name="held",
    axes=dict(inference=["ntk", "nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(
        config=dict(dataset="synthetic", image_size=8, train_size=64, val_size=0, test_size=64,
                    depth=2, max_steps=60, eval_every=20, checkpoint_every=20, batch_size=16,
                    eta0_samples=16, eta0_inits=1, early_stop_train_acc=2.0, tile_side=32),
        width=dict(fcn=16), seeds=(0,), max_failures=0,
        resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)))),
    workers=dict(train=held_train, kernel=held_kernel),
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
'''
METRICS = ("best_test_acc", "test_acc", "test_mse", "train_acc", "steps")


def _write_held(tmp: Path, name: str) -> tuple[Path, Path]:
    hold = tmp / f"{name}.hold"
    p = tmp / f"{name}.py"
    p.write_text(textwrap.dedent(HELD_SWEEP).format(hold=str(hold)))
    return p, hold


@pytest.fixture(scope="module")
def reference(ray_env, tmp_path_factory):
    """The same trials uninterrupted (no hold file), through the same Tune path."""
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep

    tmp = tmp_path_factory.mktemp("ref")
    p, _ = _write_held(tmp, "held_ref")
    res = tmp / "res"
    s = run_sweep(load_sweep(str(p)), "smoke", results=str(res), progress=False,
                  tracking=False)
    assert s.failed == 0 and s.completed == 2
    return Store(str(res), "held").latest()[0].set_index("kind")


def _kill_held_driver(sweep_file: Path, hold: Path, res: Path, address: str) -> str:
    """Start the sweep file as a driver joined to ``address``, wait until both trials sit at
    their hold (the finite one past a complete checkpoint), SIGKILL the driver's process
    group. Returns the finite trial's id."""
    hold.write_text("hold")
    proc = subprocess.Popen(
        [sys.executable, str(sweep_file), "--preset", "smoke", "--results", str(res),
         "--no-progress", "--no-report", "--address", address],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    ckdir = res / "held" / "checkpoints"
    reached = [Path(f"{hold}.train.reached"), Path(f"{hold}.kernel.reached")]
    while not (all(r.exists() for r in reached) and list(ckdir.glob(f"*/*/{MANIFEST}"))):
        assert proc.poll() is None, "the driver ended before its trials reached the hold"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    hold.unlink()  # later attempts run through
    (tid,) = [d.name for d in ckdir.iterdir()]
    assert Store(str(res), "held").parts() == []  # nothing finished before the kill
    return tid


def _resume(sweep_file: Path, results: Path, address: str) -> int:
    """`symsweep resume` of the sweep (in process, joining the module's Ray session).

    Resume never imports what sweep.json names (a results folder is data): the sweep file
    is given, and its hash must match the one the manifest recorded."""
    from orchestrator.cli import main

    return main(["resume", "held", "--results", str(results), "--sweep-file", str(sweep_file),
                 "--no-progress", "--no-report"])


def _resubmit(sweep_file: Path, results: Path, address: str) -> int:
    """The same driver command again, as `ray submit` on a new cluster does."""
    return subprocess.run(
        [sys.executable, str(sweep_file), "--preset", "smoke", "--results", str(results),
         "--no-progress", "--no-report", "--address", address],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
        text=True).returncode


@pytest.mark.parametrize("again", [_resume, _resubmit], ids=["resume", "resubmit"])
def test_killed_driver_trial_continues_from_its_checkpoint(ray_env, reference, tmp_path,
                                                           again):
    sweep_file, hold = _write_held(tmp_path, "held")
    res = tmp_path / "res"
    tid = _kill_held_driver(sweep_file, hold, res, ray_env)
    ck = TrialCheckpoints(ResultsLayout(str(res), "held"), tid)
    assert ck.complete_steps()[-1] >= 40
    # the dead run's Tune state is left behind by the kill; the next run clears it
    assert any((res / "held" / "_tune").iterdir())
    time.sleep(2)  # let Ray reap the dead driver's trial actors (frees their CPUs)

    assert again(sweep_file, res, ray_env) == 0

    st = Store(str(res), "held")
    df = st.latest()[0].set_index("kind")
    assert set(df["status"]) == {"completed"}
    nn = df.loc["train"]
    assert nn.name == "train" and nn["trial_id"] == tid
    assert nn["start_step"] == 40  # the hold's checkpoint: the latest complete one
    hist = st.read_history()[0].to_pylist()
    steps = {h["step"] for h in hist if h["trial_id"] == tid and h["attempt"] == nn["attempt"]}
    assert steps and min(steps) > nn["start_step"], steps  # no step before it was re-run
    ref = reference.loc["train"]
    for m in METRICS:  # bit for bit
        assert nn[m] == ref[m], (m, nn[m], ref[m])
    assert ref["start_step"] == 0
    # finished: its checkpoints and the runs' Tune state are gone
    assert ck.complete_steps() == [] and not Path(ck.dir).exists()
    assert list((res / "held" / "_tune").iterdir()) == []

    # the kernel cell recomputed only the tiles the dead attempt had not stored
    k, kref = json.loads(df.loc["kernel", "metrics_json"]), json.loads(
        reference.loc["kernel", "metrics_json"])
    total = kref["tiles_computed"]
    assert kref["tiles_cached"] == 0 and total > 2
    assert k["tiles_cached"] == 2 and k["tiles_computed"] == total - 2
    assert len(list((res / "tiles").glob("*.npz"))) == total
    assert df.loc["kernel", "test_acc"] == reference.loc["kernel", "test_acc"]
    assert df.loc["kernel", "test_mse"] == reference.loc["kernel", "test_mse"]
