"""The CPUs this process may really use, and one trial's claim on some of them.

Two facts Ray does not act on (ray-project/ray issue 34846): a process's CPU *affinity*
(``taskset``, SLURM's ``--cpus-per-task``, a container's cpuset) and its cgroup *quota*
(``cpu.max`` under cgroup v2, ``cpu.cfs_quota_us`` under v1, e.g. ``docker --cpus``). Ray is
given `usable_cpus` instead of ``os.cpu_count()``, so it never starts more 1-CPU trials than
there are cores to run them.

Nor does Ray confine a task to the CPUs it requested: a JAX trial sizes XLA's CPU thread pool
from the cores it may run on (``tsl::port::MaxParallelism``, i.e. ``sched_getaffinity``), and
the XLA flags that look like a limit (``--xla_cpu_multi_thread_eigen=false``, an
``intra_op_parallelism_threads`` setting) leave several busy threads (jax-ml/jax issues 1539,
743; measured: 4 busy threads on this 2-core machine, with or without them). So a CPU trial
claims as many cores as it requested (`claim_cores`) and pins itself to them before JAX starts
its threads: then XLA's pool has that many threads, and no two trials of one machine share a
core.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _cgroup_quota(proc: Path, cgroup: Path) -> float | None:
    """CPUs allowed by the tightest cgroup CPU quota on this process's path (None: no quota).
    cgroup v2: ``<cgroup>/<path>/cpu.max`` = "QUOTA PERIOD" or "max PERIOD"; v1:
    ``<cgroup>/cpu[,cpuacct]/<path>/cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``.
    Every ancestor of the path is read too (a parent's quota binds its children), and the
    mount's root alone, where a container sees the host's path but mounts only its own
    cgroup."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []

    def ancestors(base: Path, rel: str) -> list[Path]:
        parts = [p for p in rel.strip("/").split("/") if p]
        return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]

    for line in lines:
        hier, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if hier == "0" and controllers == "":  # cgroup v2 (the unified hierarchy)
            for d in ancestors(cgroup, rel):
                try:
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                if quota != "max" and float(period) > 0:
                    quotas.append(float(quota) / float(period))
        elif "cpu" in controllers.split(","):  # cgroup v1, the cpu controller
            for mount in (cgroup / controllers, cgroup / "cpu", cgroup / "cpu,cpuacct"):
                for d in ancestors(mount, rel):
                    try:
                        quota = float((d / "cpu.cfs_quota_us").read_text())
                        period = float((d / "cpu.cfs_period_us").read_text())
                    except (OSError, ValueError):
                        continue
                    if quota > 0 and period > 0:
                        quotas.append(quota / period)
    return min(quotas) if quotas else None


def usable_cpus(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int:
    """Whole CPUs this process may keep busy at once: the cores of its affinity mask
    (``os.sched_getaffinity``), capped by its cgroup CPU quota rounded down (a quota of 1.5
    CPUs runs one 1-CPU trial at full speed, not two at 75%), at least 1. ``proc`` and
    ``cgroup``: the procfs and cgroupfs mount points (other roots in tests)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(Path(proc), Path(cgroup))
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


class CoreClaim:
    """The cores one trial process holds: an ``flock`` per core in a per-user folder of the
    machine's temp dir (the ``filelock`` package), held until the process ends, however it
    ends (the kernel drops a dead process's locks: a crashed trial never strands a core)."""

    def __init__(self, cores: list[int], locks: list) -> None:
        self.cores = cores
        self._locks = locks

    def release(self) -> None:
        """Give the cores back (the process stays pinned to them)."""
        for lk in self._locks:
            lk.release()
        self._locks = []


_claim: CoreClaim | None = None


def lock_dir() -> Path:
    """Where the per-core locks live: one folder per user on this machine (every Ray node a
    machine runs shares it: they share its cores)."""
    return Path(tempfile.gettempdir()) / f"symsweep-cores-{os.getuid()}"


def claimed_cores() -> list[int] | None:
    """The cores this process claimed (`claim_cores`), None when it holds no claim."""
    return list(_claim.cores) if _claim is not None else None


def pin_threads(cores: set[int]) -> None:
    """Confine every thread of this process, and the threads it starts later, to ``cores``
    (e.g. a CPU kernel tile's Ray task, to the cores its trial claimed)."""
    # sched_setaffinity(0) sets the calling thread only: every thread the process already
    # has (Ray's, and any a library started) is pinned by its tid; threads started later
    # inherit the mask of the thread that starts them
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass
    os.sched_setaffinity(0, cores)


def claim_cores(n: int, where: Path | None = None) -> CoreClaim | None:
    """Claim ``n`` cores of this process's affinity mask that no other trial on this machine
    holds, and pin the whole process to them. Call it before JAX creates its CPU client (the
    client sizes its thread pool from the mask then). A process that already holds a claim
    of ``n`` cores keeps it (Tune reuses a trial actor for the next trial of equal
    resources).

    Returns the claim, or None where nothing was pinned: ``n`` is at least the whole mask
    (nothing to share), or fewer than ``n`` cores are free: then Ray was told of more CPUs than
    the machine has free (``--num-cpus`` above the cores, or other work on them), and the
    trial runs unpinned, with a warning saying so."""
    global _claim
    from filelock import FileLock, Timeout

    n = max(1, int(math.ceil(n)))
    if _claim is not None and len(_claim.cores) == n:
        return _claim
    if _claim is not None:
        _claim.release()
        _claim = None
    mask = sorted(os.sched_getaffinity(0))
    if n >= len(mask):
        return None
    where = where or lock_dir()
    where.mkdir(parents=True, exist_ok=True)
    got: list[int] = []
    locks: list = []
    for core in mask:
        # thread_local=False: the claim belongs to the process; no soft-lock fallback: a
        # lock file that outlives its process would strand the core
        lk = FileLock(str(where / f"cpu{core}.lock"), thread_local=False,
                      fallback_to_soft=False)
        try:
            lk.acquire(timeout=0)
        except Timeout:
            continue
        got.append(core)
        locks.append(lk)
        if len(got) == n:
            break
    if len(got) < n:
        for lk in locks:
            lk.release()
        log.warning("no %d free core(s) among %s for this trial (other trials hold them: Ray "
                    "was given more CPUs than are free); it runs unpinned and shares them",
                    n, mask)
        return None
    pin_threads(set(got))
    _claim = CoreClaim(got, locks)
    return _claim
