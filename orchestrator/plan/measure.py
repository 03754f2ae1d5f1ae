"""Unit costs for `symsweep plan`, measured on this machine, and `make_plan`, which measures
the units a sweep needs (or reuses saved ones) and projects them with the cost model
(model.py).

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
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from orchestrator.fsio import resolve_root, write_atomic
from orchestrator.plan.model import (
    ETA0_SAMPLES,
    NUM_CLASSES,
    Plan,
    Unit,
    data_sizes,
    kernel_key,
    share_propagations,
    tile_options,
    train_key,
    trial_cost,
    wall_time,
)
from orchestrator.spec import Sweep, Trial, select_trials
from workers.errors import ConfigError

ETA0_PROBE = 2  # images of the first timed NTK-vector product
# side of the first (probe) tile timed per arch: fcn pairs are cheap, gap/lap pairs dear
_PROBE_SIDE = {"fcn": 64, "lcn": 8, "vec": 8, "gap": 2, "lap4": 2, "lap8": 2}


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
    """Seconds of one warm NTK-vector product of `workers.eta0.ntk_matvec` on x."""
    import jax.numpy as jnp

    from workers.eta0 import ntk_matvec

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


def save_units(units: Mapping[tuple, Unit], path: str) -> None:
    """Write measured units as JSON (reuse them with --units)."""
    fs, p = resolve_root(path)  # atomically and durably: a reader never sees half a file
    write_atomic(fs, p, json.dumps([{**asdict(u), "key": list(u.key)} for u in units.values()],
                                   indent=1).encode())


def load_units(path: str) -> dict[tuple, Unit]:
    """Read units written by `save_units`."""
    try:
        with open(path) as f:
            raw = json.load(f)
        return {tuple(d["key"]): Unit(**{**d, "key": tuple(d["key"])}) for d in raw}
    except (OSError, ValueError, TypeError, KeyError) as ex:
        raise ConfigError(f"--units {path!r}: not a units file written by `symsweep plan "
                          f"--save-units` ({ex})") from ex
