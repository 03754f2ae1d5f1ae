"""Kernel tiles: the mapper that runs them (`TileMapper`), over the cluster's GPUs or the
trial's own CPUs.

A kernel cell (workers/kernel_trial.py) asks the kernel engine for its NNGP/NTK blocks; the
engine cuts them into tiles and calls ``map_tiles`` (`TileMapper`) on them. Each tile is keyed
by its content (tile_cache.py: `tile_key`), so equal tiles of different cells, attempts and
sweeps are computed once (tile_claims.py: also when cells start together) and read from
`TileCache` afterwards (docs/performance.md, "tile cache"). Uncached tiles run as Ray tasks
when Ray is initialised, in-process otherwise.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.cpus import claimed_cores, pin_threads
from orchestrator.spec import SWEEP_MODULE_PREFIX
from orchestrator.tile_cache import TileCache, tile_key
from orchestrator.tile_claims import STALE_S, TileClaims
from workers.devices import check_gpus, describe
from workers.errors import TrialInterrupted

log = logging.getLogger("symsweep")


def ship_by_value(fn: Callable) -> None:
    """A function defined in a sweep file (a worker, or a tile function it maps) lives in a
    module load_sweep imported under a private name that Ray's workers cannot import: make
    cloudpickle send that module by value. Functions of installed modules are left alone."""
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    if mod is not None and mod.__name__.startswith(SWEEP_MODULE_PREFIX):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)


def _run_tile(fn: Callable, names: list[str], where: tuple[str, list[int]] | None,
              gpus: float, rows: list[tuple[int, int] | None], *values: Any) -> Any:
    # a CPU tile runs on its trial's cores (``where``: the trial's host and claimed cores,
    # orchestrator.cpus): its CPUs are the trial's bundle, so it must not spread beyond them
    if where is not None and where[0] == socket.gethostname():
        pin_threads(set(where[1]))
    # an argument shipped as the block of rows all tiles share (`_shared_blocks`): its slice
    vals = [v if r is None else v[r[0]:r[1]] for v, r in zip(values, rows, strict=True)]
    import ray  # where it ran and how long, for the mapper's statistics (``stats``)

    # a GPU tile whose JAX has no GPU fails here (DeviceError), never computes on the CPU
    info = check_gpus(gpus) if gpus > 0 else None
    t0 = time.perf_counter()
    value = fn(**dict(zip(names, vals, strict=True)))
    return ray.get_runtime_context().get_node_id(), info, time.perf_counter() - t0, value


# Seconds between looks at the tiles another cell is computing (are they cached yet?), and
# between the lines that say a cell is waiting for them
WAIT_POLL_S = 2.0
WAIT_LOOK_MAX = 64  # waiting tiles looked at per poll (in turn)
WAIT_SAY_S = 300.0

# Arrays below this many bytes go inline with each tile's task; larger ones through the
# object store (a row block shared by the tiles is put once per map call).
_INLINE_BYTES = 100_000


def _row_slice_of(v: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(base, first row) when ``v`` is a contiguous block of rows of the C-contiguous array
    ``base`` (``base[r0:r0 + len(v)]``, what the kernel engine's tiles hold), else None."""
    b = v.base
    if not (isinstance(b, np.ndarray) and b.flags.c_contiguous and v.flags.c_contiguous
            and b.ndim >= 1 and b.ndim == v.ndim and b.dtype == v.dtype
            and b.shape[1:] == v.shape[1:] and b.strides[0] > 0):
        return None
    off = v.__array_interface__["data"][0] - b.__array_interface__["data"][0]
    r0, rem = divmod(off, b.strides[0])
    if rem or r0 < 0 or r0 + v.shape[0] > b.shape[0]:
        return None
    return b, int(r0)


def _shared_blocks(kwargs_list: list[Mapping[str, Any]], todo: list[int]
                   ) -> dict[int, tuple[np.ndarray, int, int]]:
    """For each base array whose row slices the tiles ``todo`` take (`_row_slice_of`):
    id(base) -> (base, lo, hi), the rows they span together, where those rows are more than
    `_INLINE_BYTES`. These blocks are put in the object store once per map call, instead of
    every tile carrying its slices (the blocks of a paper gap cell: tens of MB, against about
    3 MB of slices per tile over 10^5 tiles)."""
    spans: dict[int, tuple[np.ndarray, int, int]] = {}
    for i in todo:
        for v in kwargs_list[i].values():
            if not isinstance(v, np.ndarray):
                continue
            hit = _row_slice_of(v)
            if hit is None:
                continue
            b, r0 = hit
            old = spans.get(id(b))
            lo, hi = (r0, r0 + v.shape[0]) if old is None else \
                (min(old[1], r0), max(old[2], r0 + v.shape[0]))
            spans[id(b)] = (b, lo, hi)
    return {k: (b, lo, hi) for k, (b, lo, hi) in spans.items()
            if b[lo:hi].nbytes > _INLINE_BYTES}


@dataclass
class TileMapper:
    """``map_tiles(fn, list_of_kwargs) -> list`` for the kernel engine: cached tiles are
    loaded, the others run as Ray tasks (at most ``inflight`` at a time; in-process when Ray
    is not initialised) and each is stored as soon as it finishes, so a crash keeps them.

    Where tiles run: CPU tiles (``num_gpus`` 0) inside the trial's own CPU bundle, on the
    cores it claimed. GPU tiles anywhere in the cluster (`placement_group=None`: not confined
    to the trial's placement group, which holds only the trial's CPU and memory), each asking
    Ray for ``num_gpus`` / ``num_cpus``, up to ``inflight`` at once per cell: a cell spreads
    over every free GPU, and tiles beyond the free GPUs wait in Ray's queue (an autoscaler
    sees them as demand). The preset bounds the GPUs kernel tiles take (`tile_inflight` x the
    cells in flight); the finite runs' placement groups compete for the rest.

    Object store: each block of rows the tiles slice (the cell's images: x1, x2) is put once
    per call, and a tile's own other large inputs once per tile, released when it ends; so the
    bytes this mapper holds there are the blocks plus O(``inflight``) tiles (``stats``:
    ``put_bytes`` in all, ``peak_held_bytes`` its references pinned at most at once,
    ``peak_tile_bytes`` for the largest tile's own, ``blocks``; ``nodes``: Ray node id -> tiles
    computed there; ``tile_s``: seconds the computed tiles took, summed; ``waited``: tiles read
    after another cell computed them). Results are
    written to the cache by ``writers`` threads while the next tiles run (at most ``inflight``
    results waiting to be written).

    ``should_stop`` (stopping.StopProbe): checked before each new tile; once true, the tiles
    in flight are finished and stored, then `TrialInterrupted` is raised (a later attempt
    finds every computed tile in the cache)."""

    cache: TileCache | None
    inflight: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    use_ray: bool = True
    should_stop: Callable[[], bool] | None = None
    writers: int = 2
    hits: int = 0
    computed: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def __call__(self, fn: Callable, kwargs_list: list[Mapping[str, Any]], *,
                 on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Results of fn(**kw) for every kw, in order. With ``on_result``, each result is
        passed to ``on_result(i, value)`` as soon as it is loaded or computed (in completion
        order) and not kept: the returned list then holds None, so the caller (the kernel
        engine) holds at most the tiles in flight, not all of them."""
        memo: dict[int, str] = {}
        keys = [tile_key(fn, kw, memo) for kw in kwargs_list]
        out: list[Any] = [None] * len(keys)

        def deliver(i: int, value: Any) -> None:
            if on_result is None:
                out[i] = value
            else:
                on_result(i, value)

        todo = []
        for i, k in enumerate(keys):
            v = self.cache.get(k) if self.cache is not None else None
            if v is None:
                todo.append(i)
            else:
                self.hits += 1
                deliver(i, v)
            del v
        if not todo:
            return out
        ray_ok = False
        if self.use_ray:
            import ray

            ray_ok = ray.is_initialized()
        if not ray_ok:
            for n, i in enumerate(todo):
                if self.should_stop is not None and self.should_stop():
                    raise self._interrupted(len(todo) - n, len(todo))
                v = fn(**kwargs_list[i])
                self._store(keys[i], v)
                deliver(i, v)
                del v
            return out
        self._map_ray(fn, kwargs_list, keys, todo, deliver)
        return out

    def _map_ray(self, fn: Callable, kwargs_list: list[Mapping[str, Any]], keys: list[str],
                 todo: list[int], deliver: Callable[[int, Any], None]) -> None:
        import concurrent.futures as cf

        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ship_by_value(fn)
        if self.num_gpus == 0:
            # CPU-only: the trial's own CPU bundle covers its tiles (num_cpus=0, at most
            # `inflight` at a time), so a trial never waits on CPUs it holds itself
            remote = ray.remote(_run_tile).options(num_cpus=0, max_retries=2)
            cores = claimed_cores()
            where = (socket.gethostname(), cores) if cores else None
        else:  # GPU tiles: the cluster's free GPUs, not the trial's placement group
            remote = ray.remote(_run_tile).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=2,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
            where = None
        spans = _shared_blocks(kwargs_list, todo)
        blocks = {bid: (ray.put(b[lo:hi]), lo) for bid, (b, lo, hi) in spans.items()}
        put_bytes = block_bytes = sum(b[lo:hi].nbytes for b, lo, hi in spans.values())
        owns: dict[Any, int] = {}  # a tile in flight -> bytes of its own inputs put for it
        nodes: dict[str, int] = self.stats.setdefault("nodes", {})  # node id -> tiles run
        del spans
        self.stats["blocks"] = self.stats.get("blocks", 0) + len(blocks)
        peak = 0

        def submit(i: int) -> tuple[Any, int]:
            kw = kwargs_list[i]
            names, vals, rows, own = list(kw), [], [], 0
            for n in names:
                v, r = kw[n], None
                hit = _row_slice_of(v) if isinstance(v, np.ndarray) else None
                if hit is not None and id(hit[0]) in blocks:
                    ref, lo = blocks[id(hit[0])]
                    v, r = ref, (hit[1] - lo, hit[1] - lo + kw[n].shape[0])
                elif isinstance(v, np.ndarray) and v.nbytes > _INLINE_BYTES:
                    own += v.nbytes  # this tile's own: put now, released when it ends
                    v = ray.put(v)
                vals.append(v)
                rows.append(r)
            return remote.remote(fn, names, where, self.num_gpus, rows, *vals), own

        pending: dict[Any, int] = {}
        writes: set[cf.Future] = set()
        queue = list(todo)
        waiting: list[int] = []  # tiles another live cell has claimed: read when cached
        next_look = 0.0
        left = 0  # tiles not started because a stop was requested
        claims = TileClaims(self.cache.fs, self.cache.dir) if self.cache is not None else None

        def put(key: str, value: Any) -> None:
            assert self.cache is not None and claims is not None
            self.cache.put(key, value)
            claims.release(key)

        def cached_meanwhile(i: int) -> bool:  # another cell stored it (and let it go)
            v = self.cache.get(keys[i]) if self.cache is not None else None
            if v is None:
                return False
            self.hits += 1
            self.stats["waited"] = self.stats.get("waited", 0) + 1
            deliver(i, v)
            return True

        def claim(i: int) -> bool | None:  # True: ours to compute; None: cached meanwhile
            if claims is None:
                return True
            if not claims.claim(keys[i]):
                return False
            if cached_meanwhile(i):  # stored and released just before our claim
                claims.release(keys[i])
                return None
            return True

        said_waiting = [time.monotonic()]

        def look_at_waiting() -> None:  # cached by their holder now, or free to take over
            nonlocal waiting
            if waiting and claims is not None and \
                    time.monotonic() - said_waiting[0] >= WAIT_SAY_S:
                said_waiting[0] = time.monotonic()
                h = claims.holder(keys[waiting[0]]) or {}
                log.warning("%d kernel tile(s) wait for the cells that claimed them (e.g. pid "
                            "%s on %s, heartbeat %.0f s ago); a claim without a heartbeat for "
                            "%.0f s is taken over", len(waiting), h.get("pid"), h.get("host"),
                            time.time() - float(h.get("heartbeat") or 0), STALE_S)
            # a bounded look, in turn: a cell can wait on 10^4 tiles of a sibling, and reading
            # them all every WAIT_POLL_S would be most of what it does (on a bucket, too)
            look, rest = waiting[:WAIT_LOOK_MAX], waiting[WAIT_LOOK_MAX:]
            still = []
            for i in look:
                if cached_meanwhile(i):
                    continue
                got = claim(i)
                if got:
                    queue.append(i)
                elif got is False:
                    still.append(i)
            waiting = rest + still

        def settle(until: int) -> None:  # at most `until` writes outstanding; raise failures
            nonlocal writes
            while len(writes) > until:
                done, writes = cf.wait(writes, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    f.result()

        finished = False
        with cf.ThreadPoolExecutor(max_workers=max(1, self.writers),
                                   thread_name_prefix="tile-cache-write") as pool:
            try:
                while queue or pending or waiting:
                    if (queue or waiting) and self.should_stop is not None and \
                            self.should_stop():  # those in flight are finished below
                        left, queue, waiting = len(queue) + len(waiting), [], []
                    if waiting and time.monotonic() >= next_look:
                        look_at_waiting()
                        next_look = time.monotonic() + WAIT_POLL_S
                    while queue and len(pending) < max(1, self.inflight):
                        i = queue.pop(0)
                        got = claim(i)
                        if not got:
                            if got is False:
                                waiting.append(i)  # another cell computes it
                            continue
                        ref, own = submit(i)
                        pending[ref] = i
                        owns[ref] = own
                        put_bytes += own
                        peak = max(peak, own)
                        held = block_bytes + sum(owns.values())
                        self.stats["peak_held_bytes"] = max(
                            self.stats.get("peak_held_bytes", 0), held)
                    if claims is not None:
                        claims.refresh()
                    if not pending:
                        if waiting:
                            time.sleep(WAIT_POLL_S)
                        continue
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_POLL_S)
                    for r in ready:
                        i = pending.pop(r)
                        owns.pop(r, None)
                        node, info, secs, v = ray.get(r)
                        nodes[node] = nodes.get(node, 0) + 1
                        if info is not None:  # GPU tiles: the devices they computed on
                            seen = self.stats.setdefault("devices", {})
                            seen[describe(info)] = seen.get(describe(info), 0) + 1
                            self.stats.setdefault("device_info", {})[describe(info)] = info
                        self.stats["tile_s"] = self.stats.get("tile_s", 0.0) + secs
                        del r
                        self.computed += 1
                        deliver(i, v)
                        if self.cache is not None:
                            settle(max(1, self.inflight) - 1)
                            writes.add(pool.submit(put, keys[i], v))
                        del v
                    del ready
                settle(0)
                finished = True
            finally:  # every computed tile is in the cache before this returns or raises
                if not finished:  # a failure: the tiles in flight would only hold GPUs
                    for r in pending:
                        ray.cancel(r)
                cf.wait(list(writes))
                if claims is not None:  # tiles not computed here are free for others
                    claims.release_all()
                    self.stats["claims_taken_over"] = (self.stats.get("claims_taken_over", 0)
                                                       + claims.taken_over)
                self.stats["put_bytes"] = self.stats.get("put_bytes", 0) + put_bytes
                self.stats["peak_tile_bytes"] = max(self.stats.get("peak_tile_bytes", 0), peak)
        if left:
            raise self._interrupted(left, len(todo))

    def _interrupted(self, left: int, total: int) -> TrialInterrupted:
        return TrialInterrupted(f"stopped on a stop request with {left} of {total} uncached "
                                f"kernel tile(s) of a block left; the {self.computed} computed "
                                "are cached for the next attempt")

    def _store(self, key: str, value: Any) -> None:
        self.computed += 1
        if self.cache is not None:
            self.cache.put(key, value)


__all__ = ["TileCache", "TileMapper", "ship_by_value", "tile_key"]
