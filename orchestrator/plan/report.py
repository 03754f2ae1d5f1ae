"""The report of `symsweep plan`: measured unit costs, per cell group, column, panel and figure,
and the wall time (`format_plans`); the numbers come from model.py's `Plan`."""

from __future__ import annotations

import os
import platform

from orchestrator.plan.model import Plan


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
