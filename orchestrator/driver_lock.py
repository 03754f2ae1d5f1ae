"""The driver lock: at most one driver runs a sweep (``<root>/<sweep>/driver.lock``).

The lock file is JSON: ``host``, ``pid``, ``started_at``, ``heartbeat`` (seconds since the
epoch, refreshed every `runner.HEARTBEAT_S`) and a random ``token`` naming its holder. A lock is
*live* when its holder is: on the same host its pid decides; from another host, a heartbeat
newer than `STALE_AFTER_S` (`lock_is_live`). A dead holder's lock is taken over with a note.

A lock file that does not parse (zero-length, cut short by a crash or power loss, not an
object) names no holder. It is never written half by a live driver (creation happens under the
guard below, heartbeats are atomic renames), so it is taken over with a message, unless what is
left of it still names a live pid on this host. A driver whose lock was taken over this way
notices at its next heartbeat (the token is not its own) and stops, like any driver that lost
its lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.fsio import is_local, write_atomic
from orchestrator.layout import ResultsLayout
from workers.durable import fsync_dir
from workers.errors import ConfigError

# Another host's driver counts as gone once its heartbeat is this old (seconds). Used by
# `acquire`, by `status` / `ls` to show a driver as live, and by the runner's heartbeat, which
# stops its own sweep well before it could be taken over.
STALE_AFTER_S = 600.0


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LockState:
    """What ``driver.lock`` holds: ``lock`` (the parsed record, None when there is no file or
    it is damaged) and ``damaged`` (why it does not parse, None when it does or is absent)."""

    lock: dict[str, Any] | None
    damaged: str | None = None


def parse_lock(raw: bytes) -> LockState:
    """Parse the bytes of a lock file. Zero-length or cut-short JSON, or JSON that is not an
    object with a token, is ``damaged`` (with the reason)."""
    if not raw.strip():
        return LockState(None, "zero-length")
    try:
        rec = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        return LockState(None, f"cut short or not JSON ({ex.msg} at byte {ex.pos})"
                         if isinstance(ex, json.JSONDecodeError) else "not text")
    if not isinstance(rec, dict) or not rec.get("token"):
        return LockState(None, "not a driver lock (no token)")
    return LockState(rec)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def slurm_run() -> dict[str, Any]:
    """This driver's SLURM job and run (``slurm_job``: SLURM_JOB_ID, ``slurm_restart``:
    SLURM_RESTART_COUNT, 0 before any requeue), {} outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


def earlier_run_of_this_job(old: Mapping[str, Any]) -> str | None:
    """A note when lock ``old`` is held by an earlier run of this driver's own SLURM job (the
    same job id, a lower restart count), else None. SLURM ends a run before it starts the
    next, so that holder is gone, even when its heartbeat is fresh: its run was killed (srun
    turns the SIGTERM of scancel, a preemption or a time limit into SIGKILL of its tasks) on
    a node this driver cannot see into."""
    me = slurm_run()
    try:
        ours = me and old.get("slurm_job") == me["slurm_job"] and \
            int(old.get("slurm_restart", 0)) < me["slurm_restart"]
    except (TypeError, ValueError):
        return None
    if not ours:
        return None
    return (f"took over the lock of an earlier run of SLURM job {me['slurm_job']} (restart "
            f"{old.get('slurm_restart')}, pid {old.get('pid')} on {old.get('host')}): SLURM "
            "has ended that run")


def lock_is_live(lock: Mapping[str, Any], stale_after_s: float = STALE_AFTER_S) -> bool:
    """Same host: the pid decides. Other host: a heartbeat newer than ``stale_after_s``."""
    if lock.get("host") == socket.gethostname():
        try:
            return _pid_alive(int(lock.get("pid", -1)))
        except (TypeError, ValueError):
            return False
    try:
        hb = float(lock.get("heartbeat", 0))
    except (TypeError, ValueError):
        return False
    return now_utc().timestamp() - hb < stale_after_s


def _live_pid_in_damaged(raw: bytes) -> int | None:
    """A pid on this host still named by what is left of a damaged lock, when it is alive."""
    text = raw.decode(errors="replace")
    host = re.search(r'"host"\s*:\s*"([^"]*)"', text)
    pid = re.search(r'"pid"\s*:\s*(\d+)\s*[,}]', text)  # a terminated number: not cut short
    if host and pid and host.group(1) == socket.gethostname() and _pid_alive(int(pid.group(1))):
        return int(pid.group(1))
    return None


class DriverLock:
    """The lock of one sweep's folder (`ResultsLayout.driver_lock`)."""

    def __init__(self, layout: ResultsLayout):
        self.fs, self.dir, self.sweep, self.root = layout.fs, layout.dir, layout.sweep, layout.root
        self.path = layout.driver_lock

    def _raw(self) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def state(self) -> LockState:
        """The lock file's state (absent, damaged with the reason, or the record). An I/O
        error other than a missing file (no permission, a failing disk) is raised."""
        raw = self._raw()
        return LockState(None) if raw is None else parse_lock(raw)

    def read(self) -> dict[str, Any] | None:
        """The lock record, None when there is none or it does not parse. An I/O error (no
        permission, a failing disk or bucket) is raised: an unreadable lock is not an absent
        one (`status` would report no driver, a compaction would name none)."""
        return self.state().lock

    def acquire(self, *, stale_after_s: float = STALE_AFTER_S,
                settle_s: float = 2.0) -> tuple[dict[str, Any], str | None]:
        """Take the driver lock. Returns (our lock, a note about a stale or damaged lock taken
        over, or None). Raises ConfigError naming the live driver when one holds it.

        Of several drivers that race here (also over the same stale lock) exactly one wins.
        Locally the whole read / judge / take-over step runs under an OS file lock
        (``filelock``, i.e. flock on ``.driver.lock.guard``; released by the kernel when its
        holder dies, so it can never go stale itself; flock works on NFS v4 too) and the lock
        file is created with O_EXCL and fsynced. Object stores (s3://, gs://) have neither
        flock nor an atomic create or rename in pyarrow's API; there a driver writes its lock,
        waits ``settle_s`` and reads it back: it wins only if its token is still there. That
        holds unless a rival stalls longer than settle_s between reading the old lock and
        writing its own (a best effort; such stores are strongly consistent, so no stale
        reads). A lock that cannot be written (a full disk) leaves no lock file behind."""
        self.fs.create_dir(self.dir, recursive=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": now_utc().isoformat(timespec="seconds"),
              "heartbeat": now_utc().timestamp(), "token": uuid.uuid4().hex,
              **slurm_run()}
        if is_local(self.fs):
            from filelock import FileLock

            with FileLock(f"{self.dir}/.driver.lock.guard"):
                note = self._judge_old(stale_after_s)
                try:  # O_EXCL as well: a driver of an older symsweep takes no guard
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError as ex:
                    cur = self.read() or {}
                    raise ConfigError(
                        f"sweep '{self.sweep}' is already running: driver pid {cur.get('pid')} "
                        f"on host {cur.get('host')}, started {cur.get('started_at')}") from ex
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump(me, f)
                        f.flush()
                        os.fsync(f.fileno())
                    fsync_dir(self.dir)
                except BaseException:  # e.g. ENOSPC: no empty or half lock left behind
                    try:
                        os.unlink(self.path)
                    except OSError:
                        pass
                    raise
            return me, note
        note = self._judge_old(stale_after_s)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(me).encode())
        time.sleep(settle_s)
        cur = self.read() or {}
        if cur.get("token") != me["token"]:
            raise ConfigError(
                f"sweep '{self.sweep}' was taken by another driver starting at the same time: "
                f"pid {cur.get('pid')} on host {cur.get('host')}; wait for it, or stop it and "
                "run `symsweep resume`")
        return me, note

    def _judge_old(self, stale_after_s: float) -> str | None:
        """Raise ConfigError if a live driver holds the lock; delete a dead driver's (or a
        damaged) lock and return a note saying so; None when there is no lock. Callers
        serialise this."""
        raw = self._raw()
        if raw is None:
            return None
        st = parse_lock(raw)
        if st.lock is None:
            pid = _live_pid_in_damaged(raw)
            if pid is not None:
                raise ConfigError(
                    f"sweep '{self.sweep}' has a damaged driver lock {self.path} ({st.damaged}) "
                    f"that still names the live process {pid} on this host; stop that process "
                    "(or delete the lock if it is not a symsweep driver), then `symsweep resume`")
            self.fs.delete_file(self.path)
            return (f"took over a damaged driver lock ({st.damaged}: {raw[:60]!r}); it names "
                    "no live driver")
        old = st.lock
        earlier = earlier_run_of_this_job(old)
        if earlier:
            self.fs.delete_file(self.path)
            return earlier
        if lock_is_live(old, stale_after_s):
            raise ConfigError(
                f"sweep '{self.sweep}' is already running under {self.root}: driver pid "
                f"{old.get('pid')} on host {old.get('host')}, started {old.get('started_at')}"
                "; wait for it, or stop it and run `symsweep resume`")
        self.fs.delete_file(self.path)
        return (f"took over a stale lock of a dead driver (pid {old.get('pid')} on "
                f"{old.get('host')}, started {old.get('started_at')})")

    def heartbeat(self, lock: dict[str, Any]) -> None:
        """Refresh ``lock``'s heartbeat if it still holds the lock (atomically)."""
        cur = self.read()
        if cur is None or cur.get("token") != lock["token"]:
            return
        lock["heartbeat"] = now_utc().timestamp()
        write_atomic(self.fs, self.path, json.dumps(lock).encode())

    def release(self, lock: dict[str, Any]) -> None:
        """Delete the lock file if ``lock`` still holds it."""
        cur = self.read()
        if cur is not None and cur.get("token") == lock["token"]:
            self.fs.delete_file(self.path)
