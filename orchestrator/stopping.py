"""Stopping a sweep cleanly: by a signal to the driver or by `symsweep stop` from anywhere.

A *stop request* is the file ``<root>/<sweep>/stop_requested.json`` naming the driver it is
for (the token of its driver lock, driver_lock.py). It is written by `symsweep stop` (any
host that sees the results root: a laptop, a tmux pane, a SLURM batch script's trap) or by the
driver itself when it receives SIGINT, SIGTERM or SIGUSR1 (`StopControl`), and read

- by the driver, which then starts no new trial and ends the Tune experiment once the trials
  in flight have stopped (at most `grace_s` later; runner.py's stopper);
- by every trial in flight (`StopProbe`, polled by the workers between steps or tiles), which
  writes a checkpoint, records its attempt as ``interrupted`` (not failed: a later attempt
  continues from that checkpoint, store.py) and returns.

A request whose token is not the running driver's (a stale file of an earlier driver) is
ignored and removed when the next driver starts. Exit codes (cli.py): 128 + the signal number,
as a shell reports a process ended by it: 130 for SIGINT and for `symsweep stop`, 143 for
SIGTERM (scancel, preemption, `kill`), 138 for SIGUSR1 (SLURM's ``--signal=B:USR1@...``).
A second signal stops at once: the attempts in flight are then recorded as failed, and a later
attempt continues from their last periodic checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.driver_lock import lock_is_live
from orchestrator.fsio import write_atomic
from orchestrator.layout import STOP_REQUEST, ResultsLayout
from orchestrator.store import Store
from workers.errors import ConfigError, TrialInterrupted

log = logging.getLogger("symsweep")

STOP_FILE = STOP_REQUEST  # <root>/<sweep>/stop_requested.json (layout.py)
# Seconds the trials in flight get to checkpoint and stop after a request, before the driver
# ends them (their attempts are then recorded as failed). SLURM's --signal lead time
# (cluster/slurm.sbatch) must leave room for this and for the driver's own wrap-up.
DEFAULT_GRACE_S = 120.0
SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")
BY_COMMAND = "symsweep stop"


class StopNow(KeyboardInterrupt):
    """A second stop signal: the driver stops at once (``exit_code`` = 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal.Signals(signum).name}: stopping at once")
        self.exit_code = 128 + signum


def exit_code_for(by: str) -> int:
    """Exit code of a driver stopped by ``by`` (a signal name or `BY_COMMAND`)."""
    if by in SIGNALS:
        return 128 + int(getattr(signal, by))
    return 128 + int(signal.SIGINT)


def grace_seconds() -> float:
    """`DEFAULT_GRACE_S`, or SYMSWEEP_STOP_GRACE_S (seconds, >= 0). Raises ValueError on a
    value that is not a number >= 0."""
    raw = os.environ.get("SYMSWEEP_STOP_GRACE_S")
    if raw is None or raw == "":
        return DEFAULT_GRACE_S
    v = float(raw)
    if not v >= 0:
        raise ValueError(f"SYMSWEEP_STOP_GRACE_S={raw!r}: use seconds >= 0")
    return v


def request_stop(layout: ResultsLayout, token: str, by: str) -> dict[str, Any]:
    """Write the stop request for the driver holding lock ``token`` (atomically); returns it."""
    fs, path = layout.fs, layout.stop_request
    rec = {"token": token, "by": by, "requested_at": time.time(),
           "host": socket.gethostname(), "pid": os.getpid()}
    write_atomic(fs, path, json.dumps(rec).encode())
    return rec


def read_stop(layout: ResultsLayout) -> dict[str, Any] | None:
    """The stop request of ``sweep``, None when there is none. A file that does not parse
    (cut short) counts as a request for no driver in particular (token None)."""
    fs, path = layout.fs, layout.stop_request
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(raw.decode())
        return rec if isinstance(rec, dict) else {"token": None}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"token": None}


def clear_stop(layout: ResultsLayout, token: str | None = None,
               keep: str | None = None) -> bool:
    """Remove the stop request: only if it is for ``token``, when given; never one for
    ``keep``. True if removed."""
    fs, path = layout.fs, layout.stop_request
    if token is not None or keep is not None:
        rec = read_stop(layout)
        if rec is None or (token is not None and rec.get("token") not in (token, None)) or \
                (keep is not None and rec.get("token") == keep):
            return False
    try:
        fs.delete_file(path)
        return True
    except FileNotFoundError:
        return False


def stop_driver(layout: ResultsLayout) -> dict[str, Any]:
    """Ask the live driver of the sweep of ``layout`` to stop (`symsweep stop`): write the
    stop request naming its lock; returns the lock record (host, pid, token). Raises
    ConfigError (one line) when no driver runs the sweep."""
    results, sweep = layout.root, layout.sweep
    st = Store(layout).driver_lock.state()
    lock = st.lock
    if lock is None or not lock_is_live(lock):
        why = (f"its driver lock is damaged ({st.damaged})" if st.damaged else
               "it has no driver lock" if lock is None else
               f"its lock names pid {lock.get('pid')} on host {lock.get('host')}, which has "
               "ended")
        raise ConfigError(f"sweep '{sweep}' has no running driver under {results} ({why}): "
                          f"nothing to stop; `symsweep resume {sweep} --results {results}` "
                          "continues it")
    request_stop(layout, str(lock["token"]), BY_COMMAND)
    return lock


def wait_stopped(layout: ResultsLayout, token: str, timeout_s: float | None = None,
                 every_s: float = 1.0) -> bool:
    """Wait until the driver holding lock ``token`` has released it or died; False when
    ``timeout_s`` passed first."""
    lock_of = Store(layout).driver_lock
    t_end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:  # an unreadable lock (a flaky bucket) is not a released one: ask again
            st = lock_of.state()
        except OSError as ex:
            log.warning("could not read the driver lock of %s (%s); still waiting",
                        layout.sweep, ex)
        else:
            cur = st.lock
            if cur is None or cur.get("token") != token or not lock_is_live(cur):
                return True
        if t_end is not None and time.monotonic() >= t_end:
            return False
        time.sleep(every_s)


class StopProbe:
    """``should_stop() -> bool`` for the workers of one attempt: True once the driver holding
    lock ``token`` was asked to stop. Reads the request file at most every ``every_s``
    seconds (local disk 1 s, object stores 10 s), so workers may call it every step."""

    def __init__(self, layout: ResultsLayout, token: str | None,
                 every_s: float | None = None) -> None:
        self.layout, self.token = layout, token
        self.every_s = every_s if every_s is not None else \
            (10.0 if "://" in layout.root else 1.0)
        self._next = 0.0
        self._stopped = False

    def __call__(self) -> bool:
        if self._stopped or self.token is None:
            return self._stopped
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        try:
            rec = read_stop(self.layout)
        except OSError as ex:  # a flaky read is no stop; said once per poll
            log.warning("could not read the stop request of %s (%s)", self.layout.sweep, ex)
            return False
        self._stopped = rec is not None and rec.get("token") in (self.token, None)
        return self._stopped


class StopControl:
    """The driver's side: signal handlers, the stop request, and the lock-lost abort.

    `install` (main thread) makes SIGINT / SIGTERM / SIGUSR1 request a clean stop: the request
    file is written for the trials, `requested` is set, a line is logged. A second signal
    raises `StopNow` (a KeyboardInterrupt) at once. `reinstall` puts the handlers back after
    Ray and Tune replaced them (ray.init: SIGTERM -> sys.exit; Tune: SIGINT / SIGUSR1 end its
    loop without letting trials checkpoint); runner.py calls it from a Tune callback's setup.
    While `closing` (the driver's clean-up, until its lock is released) a signal only logs.
    `abort` (the heartbeat thread, on a lost lock) stops without waiting for trials."""

    def __init__(self, layout: ResultsLayout, token: str | None, grace_s: float) -> None:
        self.layout, self.token, self.grace_s = layout, token, grace_s
        self.sweep = layout.sweep
        self.by: str | None = None          # what asked to stop: a signal name or BY_COMMAND
        self.requested_at: float | None = None
        self.aborted: str | None = None     # why the driver must stop at once
        self.in_tune = False
        self.armed = False  # the driver's main block runs: an abort may interrupt it
        self.closing = False  # the driver's clean-up runs: a signal must not cut it short
        self._old: dict[int, Any] = {}
        self._next_poll = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config, stopper included: the saved handlers are this
        # process's own (they may hold locks: e.g. one an in-process Ray cluster installed)
        return {**self.__dict__, "_old": {}}

    @property
    def requested(self) -> bool:
        return self.by is not None

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.by or "")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread (a driver run inside a thread)
        for name in SIGNALS:
            sig = getattr(signal, name)
            if sig not in self._old:
                self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    reinstall = install

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (TypeError, ValueError):
                pass
        self._old.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.aborted is not None:  # the heartbeat's wake-up call (abort)
            # Tune's loop polls `should_end`; elsewhere in the driver's main block: stop now
            # (once: never inside the clean-up that follows)
            if self.armed and not self.in_tune:
                self.armed = False
                raise KeyboardInterrupt(self.aborted)
            return
        name = signal.Signals(signum).name
        if self.closing:  # cut short, the clean-up would leave the lock behind (stale for
            # LOCK_STALE_S on another host: a requeued SLURM job could not take the sweep over)
            log.warning("%s during the driver's clean-up: it finishes first (shutting Ray down, "
                        "releasing the driver lock); SIGKILL ends it at once", name)
            return
        if self.requested:
            log.warning("%s again: stopping at once; the trials in flight are recorded as "
                        "failed and continue from their last checkpoint on resume", name)
            raise StopNow(signum)
        self.request(name)

    def request(self, by: str) -> None:
        """Ask for a clean stop (idempotent): write the request file the trials poll."""
        if self.requested:
            return
        self.by, self.requested_at = by, time.monotonic()
        log.warning("stop requested (%s): no new trials start; the trials in flight write a "
                    "checkpoint and stop (within %.0f s), then the driver exits; send it again "
                    "to stop at once", by, self.grace_s)
        if by != BY_COMMAND and self.token is not None:  # (no token: no trial runs yet)
            try:
                request_stop(self.layout, self.token, by)
            except OSError as ex:  # the trials cannot learn of it: they run until the grace
                log.error("could not write the stop request for the trials (%s: %s); the "
                          "trials in flight are ended after %.0f s", type(ex).__name__, ex,
                          self.grace_s)

    def poll(self) -> bool:
        """Check (at most once a second) for a `symsweep stop` request naming this driver;
        returns `requested`."""
        if self.requested:
            return True
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + 1.0
        try:
            rec = read_stop(self.layout)
        except OSError:
            return False
        if rec is not None and rec.get("token") == self.token:
            self.request(str(rec.get("by") or BY_COMMAND))
        return self.requested

    def abort(self, why: str) -> None:
        """Stop at once (thread-safe): Tune's loop ends at its next step (`should_end`), and
        a SIGINT to the main thread wakes a blocking wait outside it."""
        self.aborted = why
        if threading.main_thread().ident is not None:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def should_end(self, running: Callable[[], int]) -> bool:
        """For Tune's stopper: end the experiment now? True on an abort, and once a stop was
        requested and no trial runs any more (``running()`` of them), or the grace is over."""
        if self.aborted is not None:
            return True
        if not self.poll():
            return False
        if running() == 0:
            return True
        if time.monotonic() - float(self.requested_at or 0) > self.grace_s:
            log.warning("%d trial(s) did not stop within %.0f s of the stop request: ending "
                        "them (their attempts are recorded as failed)", running(), self.grace_s)
            return True
        return False


__all__ = ["BY_COMMAND", "DEFAULT_GRACE_S", "STOP_FILE", "StopControl", "StopNow",
           "StopProbe", "TrialInterrupted", "clear_stop", "exit_code_for", "grace_seconds",
           "read_stop", "request_stop", "stop_driver", "wait_stopped"]
