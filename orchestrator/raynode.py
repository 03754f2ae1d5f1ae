"""The Ray a driver runs on: its own embedded one, or a running cluster at ``--address``.

Without an address symsweep always starts a Ray of its own (``ray.init(address="local")``):
Ray's default, ``ray.init()`` with no address, joins whatever cluster ``ray start`` last
recorded in Ray's temp dir (``ray_current_cluster``). That record outlives a cluster ended
without ``ray stop``, and the next run then failed with "When connecting to an existing
cluster, num_cpus and num_gpus must not be provided"; with someone else's cluster alive, it
joined that cluster unasked. An embedded Ray is given `orchestrator.cpus.usable_cpus` CPUs
(the affinity mask and cgroup quota, not ``os.cpu_count()``), and its processes end with the
driver however it ends (`_start_reaper`).

With an address, the cluster must answer before anything is written: `check_address` probes
its GCS port (``ray.init`` on an address where nothing listens retries for minutes) and
raises a one-line `ConfigError` otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.cpus import usable_cpus
from workers.errors import ConfigError

log = logging.getLogger("symsweep")

PROBE_TIMEOUT_S = 5.0


def recorded_cluster() -> str | None:
    """The GCS address ``ray start`` last recorded on this machine (``ray_current_cluster`` in
    Ray's temp dir: ``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then ``ray/``, as
    ``ray._common.utils.get_ray_address_file`` finds it), None when there is none."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    try:
        text = (Path(base) / "ray" / "ray_current_cluster").read_text().strip()
    except OSError:
        return None
    return text or None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_address(address: str | None) -> None:
    """Raise `ConfigError` (one line, exit code 2) unless a Ray cluster answers at
    ``address``: ``host:port`` of a GCS (``ray start --head`` prints it), ``ray://host:port``
    (Ray Client), or ``auto`` (``$RAY_ADDRESS``, else the cluster ``ray start`` recorded).
    None (no ``--address``): nothing to check, symsweep starts a Ray of its own; a live
    cluster recorded on this machine is then named in one warning, since the user may have
    meant to run on it."""
    fix = ("start it (`ray start --head`), pass the address it printed, or leave --address "
           "out to run on a Ray of symsweep's own")
    if address is None:
        rec = recorded_cluster()
        hp = _host_port(rec) if rec else None
        if hp is not None and _answers(*hp):
            log.warning("a Ray cluster started with `ray start` is running at %s; this run "
                        "starts a Ray of its own (pass --address auto to run on that cluster)",
                        rec)
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or ""
        if target in ("", "auto"):
            target = recorded_cluster() or ""
        if not target:
            raise ConfigError("--address auto: no running Ray cluster is recorded on this "
                              f"machine (no $RAY_ADDRESS, no `ray start` record); {fix}")
    hp = _host_port(target)
    if hp is None:
        raise ConfigError(f"--address {address}: not a Ray address; give host:port (as "
                          "`ray start --head` prints it), ray://host:port or auto")
    if not _answers(*hp):
        seen = f" (resolved to {target})" if target != address else ""
        raise ConfigError(f"--address {address}{seen}: no Ray cluster answers at "
                          f"{hp[0]}:{hp[1]}; {fix}")


# The reaper of an embedded Ray (see `_start_reaper`): a separate tiny process that reads the
# driver's pipe; while the driver lives it records the driver's Ray descendants every second
# (pid and start time, so a reused pid is never hit); at EOF (the driver ended, however: even
# by SIGKILL the kernel closes the pipe) it sends SIGTERM to those still alive, then SIGKILL.
_REAPER_SRC = r"""
import os, select, signal, sys, time
import psutil
driver = psutil.Process(int(sys.argv[1]))
seen = {}
def record():
    try:
        for p in driver.children(recursive=True):
            try:
                if p.pid != os.getpid() and "ray" in " ".join(p.cmdline()).lower():
                    seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass
    except psutil.Error:
        pass
fd = sys.stdin.fileno()
while True:
    record()
    if select.select([fd], [], [], 1.0)[0] and not os.read(fd, 4096):
        break
alive = []
for pid, t in seen.items():
    try:
        p = psutil.Process(pid)
        if p.create_time() == t:
            p.send_signal(signal.SIGTERM)
            alive.append(p)
    except psutil.Error:
        pass
_, left = psutil.wait_procs(alive, timeout=3)
for p in left:
    try:
        p.kill()
    except psutil.Error:
        pass
"""
_reaper: subprocess.Popen | None = None


def _start_reaper() -> None:
    """Start the reaper of this driver's embedded Ray (replacing the previous one, whose Ray
    was shut down). Ray fate-shares its direct children with the driver (PR_SET_PDEATHSIG),
    but the dashboard and runtime-env agents are the raylet's children: after a SIGKILL of the
    driver they outlived it by about a minute, ignoring SIGTERM meanwhile. Ray's own reaper
    (services.start_reaper) kills its whole process group, which would first take the driver
    out of the terminal's foreground group (Ctrl+C would no longer reach it); this one only
    kills the processes it saw descend from the driver."""
    global _reaper
    stop_reaper()
    import sys

    _reaper = subprocess.Popen(  # noqa: S603 - fixed code, our own pid
        [sys.executable, "-c", _REAPER_SRC, str(os.getpid())], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # not in the driver's group: Ctrl+C / killpg spare it


def stop_reaper() -> None:
    """After ``ray.shutdown()`` of an embedded Ray: the reaper ends whatever of it is left
    and exits (also done at interpreter exit, or by the kernel at any death of the driver)."""
    global _reaper
    if _reaper is not None:
        _reaper.stdin.close()  # type: ignore[union-attr]
        _reaper = None


def ensure_ray(address: str | None, num_cpus: int | None, env: Mapping[str, str]) -> bool:
    """Start an embedded Ray of this driver's own (``address`` None) or connect to the
    cluster at ``address`` (checked first by `check_address`), unless Ray is already
    initialised; returns True when this call started or joined it (the caller then shuts it
    down). ``num_cpus``: CPUs of an embedded Ray, default `usable_cpus`. ``env``: the trial
    processes' environment variables. Raises `ConfigError` when no cluster answers at
    ``address`` or Ray refuses to connect to it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                              log_to_driver=False, runtime_env={"env_vars": dict(env)},
                              ignore_reinit_error=True)
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kw)
        except ConnectionError as ex:  # e.g. a port that answers but is no Ray GCS
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            raise ConfigError(f"--address {address}: Ray could not connect ({first}); pass "
                              "the address `ray start --head` printed, or leave --address "
                              "out to run on a Ray of symsweep's own") from None
    else:
        _start_reaper()  # before ray.init: it records the processes as they appear
        # "local": never the cluster `ray start` recorded (stale or someone else's)
        ray.init(address="local", num_cpus=num_cpus or usable_cpus(), **kw)
    return True
