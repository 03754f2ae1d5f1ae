"""`symsweep plan`: projected compute and wall time of a sweep, from unit costs measured here.

Unit costs, measured on this machine with warm (already compiled) code on random inputs of the
trials' shapes (the cost of a step or a kernel pair does not depend on the pixel values):

* train (per distinct arch, width, depth, image size, batch): seconds per SGD step, timed over
  ``steps`` steps in one jit-compiled loop, or over as many as fit in ``budget_s`` when a step
  is slow (at least one; the total is then extrapolated linearly and the table says how many
  steps were timed); and seconds per image of a forward pass (evaluation), timed on one batch.
* kernel (per distinct tile archs, depth, image size; gap, lap4 and lap8 are one unit, the
  three readouts of one propagation, as the trials compute them): seconds per image pair of
  one tile of `workers.kernels.kernel_tile` (NNGP + NTK), on the largest square tile that fits in
  ``budget_s`` up to the side the kernel engine plans for the trial (small tiles carry more
  per-call overhead, so a reduced tile over-estimates); and the seconds of one kernel-regression
  solve (`workers.regression.kernel_predict`) at ``solve_n`` training points.

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
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import typer

from orchestrator.spec import Sweep, Trial, load_sweep, parse_only, select_trials
from workers.errors import ConfigError
from workers.vocab import ARCHS, FULL_COV_ARCHS, INFERENCES

CIFAR_SIZES = {"train": 45_000, "val": 5_000, "test": 10_000}
ETA0_INITS, ETA0_SAMPLES, LANCZOS_ITERS, NUM_CLASSES = 3, 256, 40, 10
ETA0_PROBE = 2  # images of the first timed NTK-vector product
# side of the first (probe) tile timed per arch: fcn pairs are cheap, gap/lap pairs dear
_PROBE_SIDE = {"fcn": 64, "lcn": 8, "vec": 8, "gap": 2, "lap4": 2, "lap8": 2}


# ====================================================================== trial shapes
def data_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """Images per split (train counts flips) that a trial config loads, without loading it."""
    if (cfg.get("dataset") or "synthetic") == "cifar10":
        base = CIFAR_SIZES
    else:
        from workers.data import SYNTHETIC_DEFAULT_SIZES as base
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
_NOT_IN_TILES = ("arch", "inference", "diag_reg", "store_predictions", "data_dir", "cache_dir",
                 "keep_checkpoints", "eval_batch_size")


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


# ====================================================================== measurements
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


def _block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def measure_train(key: tuple, *, steps: int = 200, budget_s: float = 30.0) -> Unit:
    """Seconds per SGD step and per forward image for one (arch, width, depth, H, batch)."""
    from workers.models import init_params, make_model
    from workers.train import Trainer

    _, arch, width, depth, h, batch = key
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2 * batch, h, h, 3)).astype(np.float32)
    y = (rng.standard_normal((2 * batch, NUM_CLASSES)) * 0.1).astype(np.float32)
    model = make_model(arch, width, depth=depth)
    trainer = Trainer(model, x, y, lr=1e-7, batch_size=batch)
    state = trainer.init_state(init_params(model, (0, 0), x.shape[1:]))
    t0 = time.perf_counter()
    state, info = trainer.run(state, 0, 1)                # compile + 1 step
    _block(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, info = trainer.run(state, 1, 1)
    _block(state)
    probe = time.perf_counter() - t0
    n = max(1, min(int(steps), int(budget_s / max(probe, 1e-9))))
    unit = Unit(key, "train", compile_s=compile_s)
    if n > 1:
        t0 = time.perf_counter()
        state, info = trainer.run(state, 2, n)
        _block(state)
        unit.step_s, unit.steps_timed = (time.perf_counter() - t0) / n, n
    else:
        unit.step_s, unit.steps_timed = probe, 1
    if info["bad_step"] >= 0:
        raise RuntimeError(f"timing run of {arch} diverged; cannot time it")
    if unit.steps_timed < steps:
        unit.notes.append(f"{unit.steps_timed} of {steps} steps timed (budget {budget_s:g} s)")
    xb = x[:batch]
    trainer.predict(state["params"], xb, batch)              # compile
    t0 = time.perf_counter()
    trainer.predict(state["params"], xb, batch)
    unit.fwd_s_per_image = (time.perf_counter() - t0) / batch
    # eta_0: one Lanczos product Theta_hat u (K JVPs + K VJPs) on the full eta_0 sample when
    # that fits in the budget; else timed on ETA0_PROBE and 4 x ETA0_PROBE images and
    # extrapolated along the line through both (a fixed per-product cost is not scaled up)
    n_full, n1, n2 = ETA0_SAMPLES, ETA0_PROBE, 4 * ETA0_PROBE
    t1 = _time_matvec(model, state["params"], np.resize(x, (n1, *x.shape[1:])))
    if t1 * n_full / n1 * 3 < budget_s:
        unit.matvec_s = _time_matvec(model, state["params"],
                                     np.resize(x, (n_full, *x.shape[1:])))
    else:
        t2 = _time_matvec(model, state["params"], np.resize(x, (n2, *x.shape[1:])))
        slope = max(t2 - t1, 0.0) / (n2 - n1)
        unit.matvec_s = t2 + slope * (n_full - n2)
        unit.notes.append(f"eta_0 product timed on {n1} and {n2} images ({t1:.3g} s, "
                          f"{t2:.3g} s), extended to {n_full} along that line")
    return unit


def _time_matvec(model: Any, params: Any, x: np.ndarray) -> float:
    """Seconds of one warm NTK-vector product of `workers.train.ntk_matvec` on x."""
    import jax.numpy as jnp

    from workers.train import ntk_matvec

    mv = ntk_matvec(lambda p, xx: model.apply({"params": p}, xx), params, jnp.asarray(x))
    u = jnp.ones((x.shape[0],), jnp.float32)
    _block(mv(u))
    t0 = time.perf_counter()
    _block(mv(u))
    return time.perf_counter() - t0


def measure_kernel(key: tuple, *, max_side: int, budget_s: float = 30.0,
                   solve_n: int = 1000) -> Unit:
    """Seconds per image pair of a kernel tile and of one regression solve at solve_n."""
    from workers.kernels import kernel_tile
    from workers.regression import kernel_predict

    _, arch, depth, h, dtype = key
    archs = arch.split("+")  # gap+lap4+lap8: the three readouts of one propagation
    rng = np.random.default_rng(0)
    probe = max(1, min(min(_PROBE_SIDE[a] for a in archs), max_side))

    def timed(side: int) -> tuple[float, float]:
        x = rng.standard_normal((2 * side, h, h, 3)).astype(np.float32)
        kw = dict(archs=archs, x_rows=x[:side], x_cols=x[side:], depth=depth,
                  dtype=np.dtype(dtype).type)
        t0 = time.perf_counter()
        kernel_tile(**kw)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        kernel_tile(**kw)
        return first, time.perf_counter() - t0

    first, t = timed(probe)
    side, pair_s = probe, t / probe**2
    big = min(max_side, int(math.sqrt(budget_s / max(pair_s, 1e-12))))
    if big >= 2 * probe:
        _, t = timed(big)
        side, pair_s = big, t / big**2
    unit = Unit(key, "kernel", pair_s=pair_s, tile_side=side, compile_s=first)
    if side < max_side:
        unit.notes.append(f"tile {side}x{side} timed, the run uses up to {max_side}x{max_side}")
    n = int(solve_n)
    a = rng.standard_normal((n, 64))
    k = a @ a.T / 64 + np.eye(n)
    y = rng.standard_normal((n, NUM_CLASSES))
    kernel_predict(k[:8, :8], k[:4, :8], y[:8])               # warm
    t0 = time.perf_counter()
    kernel_predict(k, k[: n // 4], y)
    unit.solve_s, unit.solve_n = time.perf_counter() - t0, n
    return unit


def measure_units(trials: Iterable[Trial], *, steps: int = 200, budget_s: float = 30.0,
                  solve_n: int = 1000, log: Any = None) -> dict[tuple, Unit]:
    """Measure every distinct unit the (computed) trials need, once each."""
    from workers.kernels import plan_tiles

    units: dict[tuple, Unit] = {}
    for t in trials:
        if t.derived_from:
            continue
        c = t.config
        if t.kind == "kernel":
            key = kernel_key(c)
            if key not in units:
                if log:
                    log(f"timing kernel tile: {key[1]} depth {key[2]} {key[3]}x{key[3]}")
                n = max(data_sizes(c)["train"], 1)
                r0, r1, _, _ = plan_tiles(n, n, symmetric=True, **tile_options(c))[0]
                side = r1 - r0    # the side of the trial's own tiles
                units[key] = measure_kernel(key, max_side=side, budget_s=budget_s,
                                            solve_n=min(solve_n, max(n, 2)))
        else:
            key = train_key(c)
            if key not in units:
                if log:
                    log(f"timing SGD steps: {c['arch']} width {key[2]} depth {key[3]} "
                        f"{key[4]}x{key[4]} batch {key[5]}")
                units[key] = measure_train(key, steps=steps, budget_s=budget_s)
    return units


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
        return TrialCost(t.trial_id, t.kind, c["inference"], c["arch"], False,
                         pairs * u.pair_s, solve, max(tiles, 1),
                         {"pairs": float(pairs), "tiles": float(tiles),
                          "kernel_s": pairs * u.pair_s, "solve_s": solve}, mem)
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
    regression solves (they read the tiles from the cache; ``detail['shared']`` = 1)."""
    order = sorted(range(len(trials)), key=lambda i: (trials[i].config.get("arch") not in
                                                      FULL_COV_ARCHS, trials[i].config.get("arch")))
    seen: set[str] = set()
    for i in order:
        t, c = trials[i], costs[i]
        if t.kind != "kernel" or c.derived:
            continue
        key = propagation_key(t)
        if key in seen:
            c.gpu_s = 0.0
            c.pieces = 1
            c.detail["kernel_s"] = 0.0
            c.detail["shared"] = 1.0
        seen.add(key)
    return costs


def wall_time(costs: Iterable[TrialCost], gpus: int, device_factor: float) -> dict[str, float]:
    """Wall seconds on ``gpus`` devices: longest-first list scheduling of the GPU pieces
    (finite runs whole, kernel cells cut into min(tiles, gpus) equal parts), plus the largest
    CPU solve as a tail. Also the lower bound total / gpus."""
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    items: list[float] = []
    tail = 0.0
    for c in costs:
        if c.derived:
            continue
        d = c.gpu_s / device_factor
        parts = 1 if c.kind == "train" else max(1, min(c.pieces, gpus))
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


def make_plan(sweep: Sweep, preset: str, *, gpus: int = 8, device_factor: float = 1.0,
              steps: int = 200, budget_s: float = 30.0, solve_n: int = 1000,
              only: Mapping[str, list[str]] | None = None,
              units: dict[tuple, Unit] | None = None, log: Any = None) -> Plan:
    """Expand ``sweep`` at ``preset``, measure (or reuse ``units``) and project."""
    if not device_factor > 0:
        raise ConfigError(f"--device-factor must be > 0, got {device_factor}")
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    trials = select_trials(sweep.expand(preset), only)
    units = dict(units or {})
    todo = [t for t in trials if _key(t) not in units]
    load = _load()
    units.update(measure_units(todo, steps=steps, budget_s=budget_s, solve_n=solve_n, log=log))
    load = max(load, _load()) if todo else 0.0
    costs = share_propagations(trials, [trial_cost(t, units) for t in trials])
    used = {_key(t) for t in trials if not t.derived_from}  # not the unused loaded units
    return Plan(sweep.name, preset, costs, {k: u for k, u in units.items() if k in used},
                gpus, device_factor,
                wall_time(costs, gpus, device_factor), load)


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # pragma: no cover - not on Linux/macOS
        return 0.0


def _key(t: Trial) -> tuple:
    return kernel_key(t.config) if t.kind == "kernel" else train_key(t.config)


# ====================================================================== report
def _h(hours: float) -> str:
    """Hours as '3.2 min', '12.5 h' or '1,234 h'."""
    if hours >= 100:
        return f"{hours:,.0f} h"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min"


def _gb(n: float) -> str:
    """Bytes as '850 MB' or '41.1 GB' (decimal units)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _wall(seconds: float) -> str:
    """Wall time as minutes, hours or days."""
    h = seconds / 3600
    return f"{h / 24:,.1f} days" if h >= 48 else _h(h)


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def format_plans(plans: list[Plan]) -> str:
    """Human-readable report: measured units, per (inference, arch) cell group, per column
    (arch) and panel (inference), per figure and in total, and the wall time."""
    out: list[str] = []
    first = plans[0]
    cpu = platform.processor() or platform.machine()
    out.append(f"symsweep plan: measured on {platform.node()} ({cpu}, {os.cpu_count()} CPUs), "
               f"{_device_desc()}; device factor {first.device_factor:g} (device time = "
               f"measured time / factor); {first.gpus} GPU(s)")
    load = max(p.load for p in plans)
    if load > (os.cpu_count() or 1):
        out.append(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs while measuring: "
                   "other processes shared the CPUs, so the times below are inflated; measure "
                   "on an idle machine for a tighter plan")
    out.append("")
    out.append("Measured unit costs (warm, compile excluded):")
    seen: set[tuple] = set()
    for p in plans:
        for u in p.units.values():
            if u.key in seen:
                continue
            seen.add(u.key)
            if u.kind == "train":
                _, arch, width, depth, h, batch = u.key
                out.append(f"  train  {arch:5s} width {width:<5d} depth {depth} {h}x{h} batch "
                           f"{batch}: {_fmt_s(u.step_s)}/step over {u.steps_timed} step(s), "
                           f"forward {_fmt_s(u.fwd_s_per_image)}/image, eta_0 product "
                           f"{_fmt_s(u.matvec_s)} (compile "
                           f"{u.compile_s:.1f} s)")
            else:
                _, arch, depth, h, dtype = u.key
                out.append(f"  kernel {arch} depth {depth} {h}x{h} {dtype}: "
                           f"{_fmt_s(u.pair_s)}/pair on a {u.tile_side}x{u.tile_side} tile "
                           f"({1 / u.pair_s:,.3g} pairs/s), regression solve "
                           f"{_fmt_s(u.solve_s)} at n={u.solve_n} (compile {u.compile_s:.1f} s)")
            for n in u.notes:
                out.append(f"         note: {n}; extrapolated linearly")
    grand = 0.0
    for p in plans:
        out.append("")
        out.append(f"{p.sweep} [{p.preset}]: {len(p.costs)} trials "
                   f"({sum(not c.derived for c in p.costs)} computed, "
                   f"{sum(c.derived for c in p.costs)} copies of equal kernel cells)")
        kern = [c for c in p.costs if c.kind == "kernel" and not c.derived]
        if kern:
            shared = sum(1 for c in kern if c.detail.get("shared"))
            out.append(f"  kernel propagations priced: {len(kern) - shared} for {len(kern)} "
                       f"computed kernel cells ({shared} read the tiles of a sibling cell, "
                       "e.g. lap4/lap8 those of gap: one full-covariance propagation serves "
                       "all three; they pay only their regression solves)")
        out.append(f"  {'inference':9s} {'arch':5s} {'trials':>6s} {'computed':>8s} "
                   f"{'device/trial':>13s} {'device total':>13s} {'CPU solves':>11s} "
                   f"{'peak mem/trial':>14s}")
        for (inf, arch), g in p.by("inference", "arch"):
            per = g["device_h"] / g["computed"] if g["computed"] else 0.0
            out.append(f"  {inf:9s} {arch:5s} {int(g['trials']):6d} {int(g['computed']):8d} "
                       f"{_h(per):>13s} {_h(g['device_h']):>13s} {_h(g['solve_h']):>11s} "
                       f"{_gb(g['mem_bytes']):>14s}")
        out.append("  per column (arch):   " + ", ".join(
            f"{k[0]} {_h(g['device_h'])}" for k, g in p.by("arch")))
        out.append("  per panel (inference): " + ", ".join(
            f"{k[0]} {_h(g['device_h'])}" for k, g in p.by("inference")))
        w = p.wall
        out.append(f"  figure total: {_h(p.device_hours())} device time "
                   f"({p.device_hours() / 24 / 365:.2f} device-years) + "
                   f"{_h(p.cpu_solve_hours())} CPU (regression solves)")
        out.append(f"  wall on {p.gpus} GPU(s): {_wall(w['wall_s'])} (lower bound "
                   f"{_wall(w['lower_bound_s'])}; longest single piece "
                   f"{_wall(w['longest_piece_s'])}; largest solve {_wall(w['solve_tail_s'])})")
        grand += p.device_hours()
    if len(plans) > 1:
        out.append("")
        out.append(f"all figures: {_h(grand)} device time")
    out.append("")
    out.append("Upper bounds: finite runs counted to max_steps (they stop at 100% training "
               "accuracy); eta_0 counted as 3 x 41 NTK products. A shared GPU is assumed "
               "to run its trials no faster than one after another.")
    out.append("peak mem/trial: estimated host memory of one trial (workers.memory: kernel "
               "matrices of the cell's arch + one float64 copy of the train matrix, or "
               "parameters, optimiser state and activations); each trial requests it from Ray.")
    return "\n".join(out)


def _device_desc() -> str:
    try:
        import jax

        d = jax.devices()[0]
        return f"{d.platform} {getattr(d, 'device_kind', '')} x{len(jax.devices())}".strip()
    except Exception:  # pragma: no cover - jax always has a CPU device
        return "unknown device"


def save_units(units: Mapping[tuple, Unit], path: str) -> None:
    """Write measured units as JSON (reuse them with --units)."""
    with open(path, "w") as f:
        json.dump([{**asdict(u), "key": list(u.key)} for u in units.values()], f, indent=1)


def load_units(path: str) -> dict[tuple, Unit]:
    """Read units written by `save_units`."""
    try:
        with open(path) as f:
            raw = json.load(f)
        return {tuple(d["key"]): Unit(**{**d, "key": tuple(d["key"])}) for d in raw}
    except (OSError, ValueError, TypeError, KeyError) as ex:
        raise ConfigError(f"--units {path!r}: not a units file written by `symsweep plan "
                          f"--save-units` ({ex})") from ex


# ====================================================================== CLI
def plan_command(
    sweep_files: list[str],
    preset: str = "paper",
    gpus: int = 8,
    device_factor: float = 1.0,
    steps: int = 200,
    budget_s: float = 30.0,
    solve_n: int = 1000,
    only: list[str] | None = None,
    units: str | None = None,
    save_units_to: str | None = None,
    as_json: bool = False,
) -> None:
    """Measure unit costs here and print the projected compute and wall time of sweeps."""
    import sys

    if steps < 1 or budget_s <= 0 or solve_n < 2:
        raise ConfigError("need --steps >= 1, --budget-s > 0 and --solve-n >= 2")
    known = load_units(units) if units else {}
    plans = []
    for f in sweep_files:
        sw = load_sweep(f)
        plans.append(make_plan(sw, preset, gpus=gpus, device_factor=device_factor,
                               steps=steps, budget_s=budget_s, solve_n=solve_n,
                               only=parse_only(only), units=known,
                               log=lambda m: print(f"symsweep plan: {m}", file=sys.stderr,
                                                   flush=True)))
        known.update(plans[-1].units)
    if save_units_to:
        save_units(known, save_units_to)
    if as_json:
        print(json.dumps([p.to_dict() for p in plans], default=str))
    else:
        print(format_plans(plans))


_FILES = typer.Argument(..., help="Sweep file(s), e.g. sweeps/fig2.py")
_ONLY = typer.Option(None, help="Restrict to FIELD=V1,V2 (repeatable), e.g. --only arch=vec")


def plan(
    sweep_files: list[str] = _FILES,
    preset: str = typer.Option("paper", help="smoke | cpu | paper"),
    gpus: int = typer.Option(8, help="GPUs for the wall-time estimate"),
    device_factor: float = typer.Option(1.0, help="How many times faster your GPU runs the "
                                        "same work than this machine (1: no scaling)"),
    steps: int = typer.Option(200, help="SGD steps to time per unit (fewer when slow)"),
    budget_s: float = typer.Option(30.0, "--budget-s", help="Seconds of timing per unit"),
    solve_n: int = typer.Option(1000, help="Training points of the timed regression solve"),
    only: list[str] = _ONLY,
    units: str = typer.Option(None, help="Reuse units from a --save-units JSON file"),
    save_units: str = typer.Option(None, help="Write the measured units to this JSON file"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Projected compute per figure / column and wall time on N GPUs, from unit costs
    measured on this machine."""
    plan_command(sweep_files, preset, gpus, device_factor, steps, budget_s, solve_n, only,
                 units, save_units, as_json)
