"""Faults, round three (issue 30): durable writes, and every file symsweep reads back being
zero-length or cut short, as a crash or a power loss before an fsync leaves it.

Each case failed on the code before this round: ``write_atomic`` never called fsync; a
zero-length ``sweep.json`` was a JSONDecodeError traceback in ``status`` / ``ls`` / ``table`` /
``resume``; an unparseable ``driver.lock`` blocked the sweep for good; a zero-length in-flight
point crashed ``salvage_dead_attempts`` (ArrowInvalid) and left the lock behind; ``compact``
on a read-only folder was a filelock traceback; ``show`` said "attempts: none yet" for a trial
whose only part is damaged.
"""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
from fault_helpers import attempt_row, one_line_error, snapshot
from smoke_helpers import fig2_smoke_store

from orchestrator.cli import main
from orchestrator.fsio import resolve_root, write_atomic
from orchestrator.store import ManifestDamagedError, Store
from workers.checkpoint import load_checkpoint_meta, save_checkpoint
from workers.errors import ConfigError

# --------------------------------------------------------------------------- durable writes


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync call, as (kind, path) with kind 'file' or 'dir'."""
    calls: list[tuple[str, str]] = []
    real = os.fsync

    def spy(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("dir" if os.path.isdir(path) else "file", path))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_write_atomic_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path,
                                                                              fsyncs):
    fs, base = resolve_root(str(tmp_path))
    dest = f"{base}/new/sub/part.parquet"
    write_atomic(fs, dest, b"data")
    assert open(dest, "rb").read() == b"data"
    # the parents of the directories it created, the temporary file (under its hidden name:
    # synced before it was renamed), then the directory holding the new name
    assert ("dir", str(tmp_path / "new")) in fsyncs and ("dir", str(tmp_path)) in fsyncs
    files = [i for i, (k, p) in enumerate(fsyncs) if k == "file"]
    assert len(files) == 1 and os.path.basename(fsyncs[files[0]][1]).startswith(".part.parquet.")
    assert fsyncs[-1] == ("dir", str(tmp_path / "new" / "sub")) and files[0] < len(fsyncs) - 1
    assert [n for n in os.listdir(tmp_path / "new" / "sub")] == ["part.parquet"]


def test_a_trainers_checkpoint_is_synced_before_it_is_renamed_into_place(tmp_path, fsyncs):
    import numpy as np

    d = str(tmp_path / "ck" / "step10")
    save_checkpoint(d, {"w": np.ones(3)}, {"step": 10, "config": {}})
    synced = {os.path.basename(p) for k, p in fsyncs if k == "file"}
    assert {"state.npz", "meta.json"} <= synced
    assert ("dir", str(tmp_path / "ck")) in fsyncs  # the rename made durable
    assert load_checkpoint_meta(d)["step"] == 10


def test_damaged_checkpoint_metadata_is_one_line(tmp_path):
    import numpy as np

    d = str(tmp_path / "ck")
    save_checkpoint(d, {"w": np.ones(3)}, {"step": 10, "config": {}})
    open(os.path.join(d, "meta.json"), "w").close()
    with pytest.raises(ConfigError, match=r"meta.json is damaged \(zero-length\)"):
        load_checkpoint_meta(d)


# --------------------------------------------------------------------------- driver lock


@pytest.mark.parametrize("content", ['{"host": "vm", "pid": 12', "", "[1, 2]", "\x00\x00"])
def test_an_unparseable_lock_is_taken_over_with_a_message(tmp_path, content):
    st = Store(str(tmp_path), "s")
    os.makedirs(st.dir)
    with open(st.lock_path, "w") as f:
        f.write(content)
    assert st.driver_lock.state().damaged
    lock, note = st.acquire_lock()
    assert note is not None and "damaged driver lock" in note
    assert st.read_lock()["token"] == lock["token"]
    st.release_lock(lock)
    assert not os.path.exists(st.lock_path)


def test_a_damaged_lock_that_still_names_a_live_local_driver_is_refused(tmp_path):
    st = Store(str(tmp_path), "s")
    os.makedirs(st.dir)
    with open(st.lock_path, "w") as f:  # cut after the pid: that process is alive (us)
        f.write(f'{{"host": "{socket.gethostname()}", "pid": {os.getpid()}, "started_')
    with pytest.raises(ConfigError, match=f"live process {os.getpid()} on this host"):
        st.acquire_lock()
    assert os.path.exists(st.lock_path)


def test_an_unreadable_lock_is_not_taken_for_no_driver(tmp_path, capsys, monkeypatch):
    """A lock that exists but cannot be read (no permission, a failing disk or bucket) may
    belong to a live driver: `status` says so in one line instead of reporting nothing in
    flight, and no driver takes it over."""
    from orchestrator.driver_lock import DriverLock

    st, _ = _finished_fig2(tmp_path)
    with open(st.lock_path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": 0}, f)

    def unreadable(self):
        raise PermissionError(errno.EACCES, "Permission denied", self.path)

    monkeypatch.setattr(DriverLock, "_raw", unreadable)
    with pytest.raises(PermissionError):
        st.read_lock()
    assert main(["status", "fig2", "--results", str(tmp_path)]) == 2
    one_line_error(capsys, "cannot read the driver lock", "Permission denied",
                   "whether a driver runs sweep 'fig2' is unknown")
    with pytest.raises(PermissionError):
        st.acquire_lock()
    assert os.path.exists(st.lock_path)  # never overwritten


def test_a_lock_that_cannot_be_written_leaves_no_lock_file(tmp_path, monkeypatch):
    import orchestrator.driver_lock as dl

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.json, "dump", full)
    st = Store(str(tmp_path), "s")
    with pytest.raises(OSError, match="No space left"):
        st.acquire_lock()
    assert not os.path.exists(st.lock_path)  # an empty lock would block or confuse the next


# --------------------------------------------------------------------------- manifest


def _finished_fig2(tmp_path, keep=lambda c: c["arch"] == "fcn" and c["transform"] == "identity"):
    """A fig2 smoke store whose manifest lists ``keep``'s trials, each with a finished row."""
    st, trials = fig2_smoke_store(tmp_path, keep)
    for t in trials:
        c = t.config
        st.write_attempt(attempt_row(t.trial_id, kind=t.kind, arch=c["arch"],
                                     inference=c["inference"], transform=c["transform"],
                                     seed=c["seed"], config_json=json.dumps(c)))
    return st, trials


@pytest.mark.parametrize("content", [b"", b'{"sweep": "fig2", "preset": "sm'])
def test_a_damaged_manifest_is_named_and_never_breaks_ls_for_other_sweeps(tmp_path, capsys,
                                                                         content):
    st, _ = _finished_fig2(tmp_path)
    ok = Store(str(tmp_path), "other")
    ok.write_manifest({"sweep": "other", "preset": "smoke", "trials": []})
    with open(st.manifest_path, "wb") as f:
        f.write(content)
    with pytest.raises(ManifestDamagedError, match="sweep.json of sweep 'fig2' is damaged"):
        st.read_manifest()
    assert main(["ls", "--results", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "fig2" in cap.out and "other" in cap.out  # both listed
    assert cap.err.count("\n") == 1 and "sweep.json of sweep 'fig2' is damaged" in cap.err


def test_a_damaged_manifest_is_rebuilt_from_the_sweep_file_when_unambiguous(tmp_path, caplog):
    st, trials = _finished_fig2(tmp_path, keep=lambda c: True)  # every smoke trial finished
    want = json.load(open(st.manifest_path))["trials"]
    open(st.manifest_path, "w").close()
    assert main(["status", "fig2", "--results", str(tmp_path)]) == 0
    assert "was damaged (zero-length): rebuilt it from" in caplog.text
    m = st.read_manifest()
    assert m["preset"] == "smoke" and m["rebuilt"].startswith("from ")
    assert sorted(t["trial_id"] for t in m["trials"]) == sorted(t["trial_id"] for t in want)
    assert main(["table", "fig2", "--results", str(tmp_path)]) == 0


def test_a_damaged_manifest_of_a_selection_is_refused_with_the_command_that_repairs_it(
        tmp_path, capsys):
    st, _ = _finished_fig2(tmp_path)  # an --only selection: the parts cannot tell which
    open(st.manifest_path, "w").close()
    before = snapshot(tmp_path)
    for argv in (["status", "fig2"], ["resume", "fig2", "--no-progress"], ["compact", "fig2"]):
        assert main([*argv, "--results", str(tmp_path)]) == 2
        one_line_error(capsys, "sweep.json of sweep 'fig2' is damaged (zero-length)",
                       "cannot be rebuilt",
                       "symsweep run sweeps/fig2.py --preset smoke --only arch=fcn --only "
                       f"transform=identity --results {tmp_path}")
    assert snapshot(tmp_path) == before
    assert main(["table", "fig2", "--results", str(tmp_path)]) in (0, 2)  # never a traceback


# --------------------------------------------------------------------------- in-flight files


def _dead_attempt(st: Store, tid: str, points: int = 3) -> None:
    """An attempt 1 of ``tid`` that died: its marker, ``points`` in-flight points, no part."""
    st.mark_running(tid, 1, {"preset": "smoke", "kind": "train", "arch": "vec",
                             "inference": "nn", "transform": "identity", "seed": 0,
                             "config_json": "{}", "started_at": "2026-01-01T00:00:00+00:00"})
    for i in range(points):
        st.write_inflight(tid, 1, i, {"step": 10 * (i + 1), "test_acc": 0.1 * i})


def test_a_zero_length_inflight_point_is_left_out_of_the_salvaged_attempt(tmp_path, capsys):
    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "trials": []})
    _dead_attempt(st, "t1")
    victim = sorted(os.listdir(st.inflight_dir))[1]
    open(f"{st.inflight_dir}/{victim}", "w").close()
    assert [p.endswith(victim) for p, _ in st.damaged_inflight()] == [True]
    notes = st.salvage_dead_attempts()
    assert len(notes) == 1 and "1 damaged in-flight file(s) left out" in notes[0]
    row = st.latest()[0].set_index("trial_id").loc["t1"]
    assert row["status"] == "failed" and "2 history point(s) up to step 30" in row["error"]
    assert os.listdir(st.inflight_dir) == [] and os.listdir(st.running_dir) == []


def test_a_zero_length_marker_is_salvaged_from_its_points(tmp_path):
    st, trials = fig2_smoke_store(tmp_path, lambda c: c["arch"] == "fcn")
    tid = trials[0].trial_id
    _dead_attempt(st, tid, points=2)
    open(f"{st.running_dir}/{tid}.json", "w").close()
    assert [why for _, why in st.damaged_inflight()] == ["zero-length"]
    notes = st.salvage_dead_attempts()
    assert len(notes) == 1 and "in-flight marker was damaged" in notes[0]
    row = st.latest()[0].set_index("trial_id").loc[tid]
    assert row["status"] == "failed" and row["arch"] == "fcn"  # filled from the manifest
    assert st.damaged_inflight() == []


def test_status_names_damaged_inflight_files_and_resume_gets_past_them(tmp_path, capsys):
    st, trials = _finished_fig2(tmp_path)
    tid = trials[0].trial_id
    # a newer attempt of a finished trial died with a zero-length point: salvage must not crash
    st.mark_running(tid, 2, {"preset": "smoke", "kind": trials[0].kind})
    st.write_inflight(tid, 2, 0, {"step": 10, "test_acc": 0.5})
    name = os.listdir(st.inflight_dir)[0]
    open(f"{st.inflight_dir}/{name}", "w").close()
    assert main(["status", "fig2", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"damaged in-flight file {st.inflight_dir}/{name} (zero-length)" in out
    notes = st.salvage_dead_attempts()  # what resume does first, under the lock
    assert len(notes) == 1 and st.damaged_inflight() == [] and st.read_lock() is None


# --------------------------------------------------------------------------- show, compact


def test_show_names_a_trials_only_part_when_it_is_damaged(tmp_path, capsys):
    st, trials = _finished_fig2(tmp_path)
    tid = trials[0].trial_id
    part = next(n for n in os.listdir(st.trials_dir) if n.startswith(tid))
    open(f"{st.trials_dir}/{part}", "w").close()
    assert main(["show", tid, "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "attempts: none readable" in out and f"DAMAGED part {st.trials_dir}/{part}" in out
    assert "none yet" not in out


def test_compact_refuses_a_read_only_folder_with_runs_one_line(tmp_path, capsys):
    from test_cli_input import _make_read_only, _undo_read_only

    _finished_fig2(tmp_path)
    before = snapshot(tmp_path)
    undo = _make_read_only(tmp_path)
    try:
        assert main(["compact", "fig2", "--results", str(tmp_path)]) == 2
        one_line_error(capsys, f"--results {tmp_path}", "cannot write")
    finally:
        _undo_read_only(undo)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- naming a full disk


class _RayTaskError(Exception):
    """Like ray.exceptions.RayTaskError: the worker's exception in ``cause``, not chained."""

    def __init__(self, cause: BaseException):
        super().__init__("task failed")
        self.cause = cause


@pytest.mark.parametrize("ex,folder,what", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/r/fig2/trials/.p.tmp"),
     "/x/r/fig2/trials", "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/x/r/mlflow.db"), "/x/r",
     "quota exceeded"),
    (_RayTaskError(OSError(errno.ENOSPC, "No space left on device", "/x/ck/state.npz")),
     "/x/ck", "no space left on device"),
    (RuntimeError("MLflow tracking store cannot be opened (OperationalError: database or disk "
                  "is full)"), None, "no space left on device"),
])
def test_a_full_disk_is_named_in_one_line_with_its_folder(ex, folder, what, tmp_path,
                                                          monkeypatch):
    from orchestrator import fsio

    # no file named: the fullest of the places a run writes (results, temp, Ray's temp)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    frees = {str(tmp_path / "ray"): 10, "/x/r": 5_000_000}
    monkeypatch.setattr(fsio, "free_bytes", lambda p: frees.get(p, 10**9))
    err = fsio.disk_full_error(ex, "/x/r", "fig2")
    assert err is not None and "\n" not in str(err) and err.exit_code == 2
    assert str(err).startswith(f"{what} in {folder or tmp_path / 'ray'} (")
    assert "symsweep resume fig2 --results /x/r" in str(err)
    assert fsio.disk_full_error(ValueError("other"), "/x/r", "fig2") is None
    assert fsio.disk_full_error(OSError(errno.EACCES, "denied"), "/x/r", "fig2") is None


def test_a_requeued_slurm_job_takes_over_the_lock_its_killed_earlier_run_left(tmp_path,
                                                                              monkeypatch):
    """srun turns scancel's / a preemption's SIGTERM into SIGKILL of the driver, so its lock
    stays with a fresh heartbeat; the head of the requeued run may be another host, where it
    would wait out the stale time. A later run of the same SLURM job takes it over at once
    (SLURM ends a run before the next starts); another job, or the same run, does not."""
    import time as _time

    st = Store(str(tmp_path), "s")
    os.makedirs(st.dir)

    def left_by(job, restart):
        with open(st.lock_path, "w") as f:
            json.dump({"host": "node0-old-head", "pid": 1, "token": "old",
                       "heartbeat": _time.time(), "slurm_job": job, "slurm_restart": restart}, f)

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    left_by("77", 0)
    lock, note = st.acquire_lock()
    assert "earlier run of SLURM job 77 (restart 0" in note
    assert lock["slurm_job"] == "77" and lock["slurm_restart"] == 1
    st.release_lock(lock)
    for job, restart in (("78", 0), ("77", 1)):  # another job; this same run
        left_by(job, restart)
        with pytest.raises(ConfigError, match="already running"):
            st.acquire_lock()
    monkeypatch.delenv("SLURM_JOB_ID")
    left_by("77", 0)
    with pytest.raises(ConfigError, match="already running"):  # outside SLURM: the heartbeat
        st.acquire_lock()
