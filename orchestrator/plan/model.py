"""The cost model of `symsweep plan`: trial shapes, peak memory, which kernel cells share one
propagation, and the projection of a sweep's device time and wall time from unit costs.

Nothing here measures (measure.py does); every function is arithmetic on a trial's config and
the units, so it is tested against closed forms (tests/test_plan.py).

Projection per trial (an upper bound where runs can stop early):

* finite run: eta_0 estimate + max_steps x step + (max_steps // eval_every) x (train + val +
  test images) x forward. eta_0 (`workers.train` defaults: 3 inits, n = 256 images): one
  NTK-vector product is timed (on 256 images, or on 2 and 8 and extended along that line
  when slow) and counted 41 times per init (a linearisation plus at most 40 Lanczos
  products: a bound, Lanczos usually stops sooner). Runs that reach 100% training accuracy
  stop earlier; NN+'s L2 term is not timed separately.
* kernel cell: pairs x pair-time, the pairs being those of the tiles
  `workers.kernels.plan_tiles` lays out for train x train (upper triangle), test x train and
  val x train; plus two regression solves (NNGP and NTK) scaled as (N / solve_n)^3. The solves
  run on the trial's CPU, not on a GPU, so ``device_factor`` does not shrink them.
* a kernel cell Theorem 4.1 makes equal to another (``derived_from``) costs nothing.
* one propagation per group of kernel cells computing the same tiles (`propagation_key`):
  gap, lap4 and lap8 of one dataset are the three readouts of one full-covariance
  propagation (``kernel_tile(archs=[gap, lap4, lap8])``, timed as one unit on one tile
  shape), so the first cell of the group pays the tiles and its siblings, which read them
  from the tile cache, only their regression solves.

Device time = measured CPU time / ``device_factor`` (time a few steps of one arch on your GPU
and divide; 1 means "this machine"). Wall time on G GPUs: finite runs are indivisible, kernel
cells split into their tiles; work is packed longest-first onto G devices (list scheduling),
assuming a GPU shared by several trials (fractional ``gpu`` resources) runs them no faster
than one after another, then the largest regression solve is added as a tail. A lower bound
(total / G) is printed beside it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from orchestrator.spec import Trial
from workers.errors import ConfigError
from workers.vocab import ARCHS, FULL_COV_ARCHS, INFERENCES

CIFAR_SIZES = {"train": 45_000, "val": 5_000, "test": 10_000}
ETA0_INITS, ETA0_SAMPLES, LANCZOS_ITERS, NUM_CLASSES = 3, 256, 40, 10


# ====================================================================== trial shapes
def data_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """Images per split (train counts flips) that a trial config loads, without loading it."""
    if (cfg.get("dataset") or "synthetic") == "cifar10":
        base = CIFAR_SIZES
    else:
        from workers.synthetic import SYNTHETIC_DEFAULT_SIZES as base
    out = {s: int(cfg[f"{s}_size"]) if cfg.get(f"{s}_size") is not None else int(base[s])
           for s in ("train", "val", "test")}
    if cfg.get("flip"):
        out["train"] *= 2
    return out


def image_shape(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of a trial's images: image_size, else 32 x 32 (CIFAR-10 and synthetic)."""
    s = int(cfg.get("image_size") or 32)
    return (s, s, 3)


def train_key(cfg: Mapping[str, Any]) -> tuple:
    """What a step's cost depends on: (arch, width, depth, H, batch)."""
    return ("train", cfg["arch"], int(cfg["width"]), int(cfg.get("depth", 8)),
            image_shape(cfg)[0], int(cfg.get("batch_size", 40)))


def tile_archs(cfg: Mapping[str, Any]) -> list[str]:
    """The archs each tile of a kernel trial computes (`workers.kernel_trial`): gap, lap4 and
    lap8 together (one full-covariance propagation serves the three), else the arch alone."""
    return list(FULL_COV_ARCHS) if cfg["arch"] in FULL_COV_ARCHS else [cfg["arch"]]


def kernel_key(cfg: Mapping[str, Any]) -> tuple:
    """What a kernel pair's cost depends on: (tile archs joined by '+', depth, H, dtype).
    gap, lap4 and lap8 share one key: their tiles are the same computation."""
    return ("kernel", "+".join(tile_archs(cfg)), int(cfg.get("depth", 8)), image_shape(cfg)[0],
            str(cfg.get("kernel_dtype") or "float32"))


# config keys that do not change a kernel cell's tiles (its regression or bookkeeping only)
_NOT_IN_TILES = ("arch", "inference", "diag_reg", "diag_reg_grid", "store_predictions",
                 "data_dir", "cache_dir", "keep_checkpoints", "eval_batch_size")


def propagation_key(t: Trial) -> str:
    """Kernel cells with equal keys compute the same tiles (same images, depth, w/b, dtype,
    tiling and tile archs): the first computes them, the others find them in the tile cache
    (`orchestrator.tiles.TileCache`). NNGP and NTK come from the same tiles, and gap, lap4 and
    lap8 from one propagation."""
    cfg = {k: v for k, v in t.config.items() if k not in _NOT_IN_TILES}
    cfg["tile_archs"] = tile_archs(t.config)
    return json.dumps(cfg, sort_keys=True, default=str)


def tile_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `workers.kernels.plan_tiles` options a kernel trial with this config uses."""
    from workers.kernels import DEFAULT_MEMORY_BYTES

    return dict(archs=tile_archs(cfg), image_shape=image_shape(cfg),
                memory_bytes=int(cfg.get("tile_memory_bytes") or DEFAULT_MEMORY_BYTES),
                itemsize=np.dtype(cfg.get("kernel_dtype") or "float32").itemsize,
                max_side=int(cfg["tile_side"]) if cfg.get("tile_side") else None)


def kernel_pairs(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(image pairs, tiles) a kernel cell computes, from `workers.kernels.plan_tiles`."""
    from workers.kernels import plan_tiles

    n = data_sizes(cfg)
    kw = tile_options(cfg)
    pairs = tiles = 0
    for rows, sym in ((n["train"], True), (n["test"], False), (n["val"], False)):
        if rows == 0 or n["train"] == 0:
            continue
        t = plan_tiles(rows, n["train"], symmetric=sym, **kw)
        tiles += len(t)
        pairs += sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in t)
    return pairs, tiles


@dataclass
class Unit:
    """One measured unit cost. kind 'train': step_s, fwd_s_per_image; 'kernel': pair_s,
    solve_s (at solve_n points). ``timed`` says what was timed, for the report."""

    key: tuple
    kind: str
    step_s: float = 0.0
    fwd_s_per_image: float = 0.0
    matvec_s: float = 0.0
    steps_timed: int = 0
    pair_s: float = 0.0
    tile_side: int = 0
    solve_s: float = 0.0
    solve_n: int = 0
    compile_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# ====================================================================== projection
@dataclass
class TrialCost:
    """Projected cost of one trial, in seconds of this machine (CPU) unless named _device."""

    trial_id: str
    kind: str
    inference: str
    arch: str
    derived: bool
    gpu_s: float            # the part a GPU does (scaled by device_factor)
    cpu_s: float            # the part that stays on a CPU (regression solves)
    pieces: int             # how many independent pieces (kernel tiles; 1 for a finite run)
    detail: dict[str, float]
    mem_bytes: int = 0      # estimated peak host memory of the trial (workers.memory)
    spread: int = 0         # GPUs its pieces may use at once (tile_inflight); 0: any number


def trial_cost(t: Trial, units: Mapping[tuple, Unit]) -> TrialCost:
    """Projected compute of one trial from measured units (see the module docstring)."""
    c = t.config
    if t.derived_from:
        return TrialCost(t.trial_id, t.kind, c["inference"], c["arch"], True, 0.0, 0.0, 0, {})
    n = data_sizes(c)
    mem = trial_memory(t)
    if t.kind == "kernel":
        u = units[kernel_key(c)]
        pairs, tiles = kernel_pairs(c)
        solve = 2.0 * u.solve_s * (n["train"] / u.solve_n) ** 3 if n["train"] else 0.0
        # GPU tiles: at most tile_inflight at once (orchestrator.tiles.TileMapper)
        spread = int(t.resources.get("tile_inflight", 1)) if t.resources.get("tile_gpu") else 0
        return TrialCost(t.trial_id, t.kind, c["inference"], c["arch"], False,
                         pairs * u.pair_s, solve, max(tiles, 1),
                         {"pairs": float(pairs), "tiles": float(tiles),
                          "kernel_s": pairs * u.pair_s, "solve_s": solve}, mem,
                         spread=max(spread, 0))
    u = units[train_key(c)]
    steps = int(c.get("max_steps", 1_000_000))
    every = max(1, int(c.get("eval_every", 1000)))
    sgd = steps * u.step_s
    evals = (steps // every) * (n["train"] + n["val"] + n["test"]) * u.fwd_s_per_image
    # inits x (one linearisation ~ one product + up to LANCZOS_ITERS products), scaled to the
    # sample size the trial uses
    eta0 = 0.0 if c.get("eta0") else (ETA0_INITS * (LANCZOS_ITERS + 1) * u.matvec_s
                                      * min(ETA0_SAMPLES, n["train"]) / ETA0_SAMPLES)
    return TrialCost(t.trial_id, t.kind, c["inference"], c["arch"], False, sgd + evals + eta0,
                     0.0, 1, {"steps": float(steps), "sgd_s": sgd, "eval_s": evals,
                              "eta0_s": eta0}, mem)


def trial_memory(t: Trial) -> int:
    """Estimated peak host memory (bytes) of one trial: `workers.memory.trial_bytes` of its
    config and split sizes (0 for a derived cell, which runs nothing)."""
    from workers.memory import trial_bytes

    if t.derived_from:
        return 0
    return trial_bytes(t.kind, t.config, data_sizes(t.config))


def share_propagations(trials: list[Trial], costs: list[TrialCost]) -> list[TrialCost]:
    """Price each propagation once: of the computed kernel cells with one `propagation_key`
    (e.g. gap, lap4 and lap8 of one transform and seed), the first in the runner's order
    (gap before lap4 before lap8) keeps the tiles' cost, the others keep only their
    regression solves (they read the tiles from the cache; ``detail['shared']`` = 1). Started
    together, the cells of a group split its tiles (orchestrator/tile_claims.py), so the
    keeper's tiles may run on all their ``tile_inflight`` GPUs at once (``spread`` summed)."""
    order = sorted(range(len(trials)), key=lambda i: (trials[i].config.get("arch") not in
                                                      FULL_COV_ARCHS, trials[i].config.get("arch")))
    seen: dict[str, TrialCost] = {}
    for i in order:
        t, c = trials[i], costs[i]
        if t.kind != "kernel" or c.derived:
            continue
        key = propagation_key(t)
        keeper = seen.get(key)
        if keeper is not None:
            if keeper.spread and c.spread:
                keeper.spread += c.spread
            c.gpu_s = 0.0
            c.pieces = 1
            c.spread = 0
            c.detail["kernel_s"] = 0.0
            c.detail["shared"] = 1.0
        else:
            seen[key] = c
    return costs


def wall_time(costs: Iterable[TrialCost], gpus: int, device_factor: float) -> dict[str, float]:
    """Wall seconds on ``gpus`` devices: longest-first list scheduling of the GPU pieces
    (finite runs whole, kernel cells cut into min(tiles, tile_inflight, gpus) equal parts: the
    runner keeps at most tile_inflight tiles of a cell in flight), plus the largest CPU solve
    as a tail. Also the lower bound total / gpus."""
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    items: list[float] = []
    tail = 0.0
    for c in costs:
        if c.derived:
            continue
        d = c.gpu_s / device_factor
        parts = 1 if c.kind == "train" else max(1, min(c.pieces, c.spread or gpus, gpus))
        items.extend([d / parts] * parts)
        tail = max(tail, c.cpu_s)
    total = sum(items)
    loads = [0.0] * gpus
    heapq.heapify(loads)
    for d in sorted(items, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    makespan = max(loads) if items else 0.0
    return {"wall_s": makespan + tail, "lower_bound_s": total / gpus + tail,
            "longest_piece_s": max(items, default=0.0), "solve_tail_s": tail}


@dataclass
class Plan:
    """The projection of one sweep at one preset."""

    sweep: str
    preset: str
    costs: list[TrialCost]
    units: dict[tuple, Unit]
    gpus: int
    device_factor: float
    wall: dict[str, float]
    load: float = 0.0       # highest 1-minute load average seen while measuring

    def device_hours(self) -> float:
        return sum(c.gpu_s for c in self.costs) / self.device_factor / 3600

    def cpu_solve_hours(self) -> float:
        return sum(c.cpu_s for c in self.costs) / 3600

    def by(self, *fields: str) -> list[tuple[tuple, dict[str, float]]]:
        """Totals grouped by trial fields: (values, {trials, computed, device_h, solve_h,
        mem_bytes}), mem_bytes the largest estimated peak memory of one trial in the group."""
        groups: dict[tuple, dict[str, float]] = {}
        for c in self.costs:
            k = tuple(getattr(c, f) for f in fields)
            g = groups.setdefault(k, {"trials": 0, "computed": 0, "device_h": 0.0,
                                      "solve_h": 0.0, "mem_bytes": 0})
            g["mem_bytes"] = max(g["mem_bytes"], c.mem_bytes)
            g["trials"] += 1
            g["computed"] += 0 if c.derived else 1
            g["device_h"] += c.gpu_s / self.device_factor / 3600
            g["solve_h"] += c.cpu_s / 3600
        return sorted(groups.items(), key=lambda kv: _order(kv[0]))

    def to_dict(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "preset": self.preset, "gpus": self.gpus,
                "load_average": self.load,
                "device_factor": self.device_factor, "device_hours": self.device_hours(),
                "cpu_solve_hours": self.cpu_solve_hours(), "wall": self.wall,
                "units": [{**asdict(u), "key": list(u.key)} for u in self.units.values()],
                "trials": [asdict(c) for c in self.costs]}


_ORDER = {v: i for i, v in enumerate((*INFERENCES, *ARCHS))}


def _order(key: tuple) -> tuple:
    return tuple(_ORDER.get(k, 99) for k in key)
