"""Fig. 4: learning curves. Test error (1 - best test accuracy) and test MSE against the
training-set size m (m counts left-right flips), power-law fits over the first / last points
(`orchestrator.fits.segment_fits`; lengths from the sweep file's ``analysis`` or the command
line) with R^2 and the slope's standard error (paper Sec. 6, Fig. 4). figS6 reuses the curve
points and fits."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    ARCH_LABEL,
    LABELS,
    SHORT_T,
    TRANSFORM_LABEL,
    agg,
    arch_label,
    chance_accuracy,
    derived_handle,
    derived_keys,
    draw_chance,
    draw_points,
    finish,
    format_cell,
    has_derived,
    loglog,
    pyplot,
    title,
)
from orchestrator.figures.palette import ARCH_COLORS, INFERENCE_MARKERS, TRANSFORM_LINESTYLES
from orchestrator.fits import PowerLawFit, segment_fits
from workers.vocab import KERNEL_INFERENCES


def curve_label(inference: str, arch: str, transform: str) -> str:
    inf_w = "inf" if inference in KERNEL_INFERENCES else "n"
    return f"{ARCH_LABEL[arch]}_{inf_w} {LABELS[inference]}, {SHORT_T[transform]}"


def curve_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (inference, arch, transform, m): acc / err / mse mean and std over
    successful runs, n_success, n_finished."""
    rows = []
    for (inf, arch, tr, mm), g in df.groupby(["inference", "arch", "transform", "m"],
                                             sort=False):
        ok = g[g["ok"]]
        acc, acc_sd, n = agg(ok["best_test_acc"])
        mse, mse_sd, _ = agg(ok["test_mse"])
        rows.append((inf, arch, tr, float(mm), acc, acc_sd, 1.0 - acc, mse, mse_sd, n, len(g)))
    pts = pd.DataFrame(rows, columns=["inference", "arch", "transform", "m", "acc", "acc_std",
                                      "err", "mse", "mse_std", "n_success", "n_finished"])
    return pts.sort_values(["inference", "arch", "transform", "m"]).reset_index(drop=True)


def curve_fits(pts: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per curve and quantity (err, mse) and segment (first, last, all): slope, R^2, stderr,
    n points and their m range."""
    rows = []
    for (inf, arch, tr), g in pts.groupby(["inference", "arch", "transform"], sort=False):
        g = g.dropna(subset=["acc"])
        for q in ("err", "mse"):
            fits = segment_fits(g["m"], g[q], first=first, last=last)
            for seg, f in fits.items():
                if f is None:
                    continue
                rows.append((inf, arch, tr, q, seg, f.slope, f.r2, f.stderr, f.n, f.x_min,
                             f.x_max, f.intercept))
    return pd.DataFrame(rows, columns=["inference", "arch", "transform", "quantity", "segment",
                                       "slope", "r2", "stderr", "points", "m_min", "m_max",
                                       "intercept"])


def _fmt_fit(r: Any) -> str:
    se = "" if not np.isfinite(r.stderr) else f" ±{r.stderr:.3f}"
    return f"{r.slope:+.3f}{se} (R²={r.r2:.3f}, {int(r.m_min)}-{int(r.m_max)})"


def fit_defaults(m: Mapping[str, Any], first: int | None, last: int | None
                  ) -> tuple[int, int]:
    a = m.get("analysis") or {}
    return (int(first if first is not None else a.get("fit_first", 3)),
            int(last if last is not None else a.get("fit_last", 3)))


def analysis_of(m: Mapping[str, Any]) -> dict:
    """The sweep file's ``analysis`` defaults (CompositeSweep). When the file does not load,
    a warning says so and which segment lengths apply instead (they were reset silently)."""
    try:
        from orchestrator.spec import load_recorded_sweep

        # the repository's sweeps/<name>.py, never the file the manifest names (a results
        # folder is data, not code); only its analysis defaults are read, so no hash check
        return dict(getattr(load_recorded_sweep(m["sweep"], m, force=True), "analysis", {})
                    or {})
    except Exception as ex:
        d = fit_defaults({}, None, None)
        logging.getLogger("symsweep").warning(
            "fit segments: the sweep '%s' does not load (%s: %s), so its analysis defaults "
            "are unknown; using first %d / last %d points (set them with --fit-first / "
            "--fit-last)", m.get("sweep"), type(ex).__name__,
            " ".join(str(ex).split())[:200], d[0], d[1])
        return {}


def points_and_fits(df: pd.DataFrame, m: Mapping[str, Any], first: int | None,
                     last: int | None) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Learning-curve points, their segment fits, and the segment lengths used (first/last
    default to the sweep's)."""
    a = analysis_of(m) if first is None or last is None else {}
    first, last = fit_defaults({"analysis": a}, first, last)
    pts = curve_points(df)
    return pts, curve_fits(pts, first, last), first, last


def curves_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                 first: int | None = None, last: int | None = None, name: str = "fig4",
                 **_: Any) -> str:
    pts, fits, first, last = points_and_fits(df, m, first, last)
    if fmt == "csv":
        return pts.to_csv(index=False) + "\n" + fits.to_csv(index=False)
    out = io.StringIO()
    out.write(f"{name} [{m.get('preset')}]: learning curves, test accuracy / error in %, test "
              "MSE (mean over successful runs; m counts flips)\n")
    for (inf, arch, tr), g in pts.groupby(["inference", "arch", "transform"], sort=False):
        out.write(f"\n{curve_label(inf, arch, tr)}\n")
        t = pd.DataFrame({
            "m": g["m"].astype(int),
            "acc %": [format_cell(a, s, n, k) for a, s, n, k in
                      zip(g["acc"], g["acc_std"], g["n_success"], g["n_finished"], strict=True)],
            "err %": [f"{100 * e:.2f}" if np.isfinite(e) else "-" for e in g["err"]],
            "MSE": [f"{v:.5f}" if np.isfinite(v) else "-" for v in g["mse"]],
        })
        out.write(t.to_string(index=False) + "\n")
    out.write(f"\npower-law slopes on log-log (first {first} / last {last} points / all; "
              "± = stderr of the slope)\n")
    if len(fits):
        rows = {}
        for (inf, arch, tr), g in fits.groupby(["inference", "arch", "transform"], sort=False):
            r = {f"{q} {seg}": _fmt_fit(x) for x in g.itertuples()
                 for q, seg in [(x.quantity, x.segment)]}
            rows[curve_label(inf, arch, tr)] = r
        cols = [f"{q} {s}" for q in ("err", "mse") for s in ("first", "last", "all")]
        frame = pd.DataFrame(rows).T
        frame = frame[[c for c in cols if c in frame.columns]].fillna("-")
        with pd.option_context("display.width", 400, "display.max_columns", 30,
                               "display.max_colwidth", 60):
            out.write(frame.to_string() + "\n")
    else:
        out.write("(fewer than two sizes per curve: no fits)\n")
    return out.getvalue()


def _draw_fit(ax: Any, f: PowerLawFit | None, color: Any, ls: str) -> None:
    if f is None:
        return
    xs = np.geomspace(f.x_min, f.x_max, 20)
    ax.plot(xs, f.predict(xs), ls, color=color, lw=0.9, alpha=0.8)


def series_label(inference: str, arch: str, transform: str) -> str:
    """A learning curve's legend name in the paper's notation: model, inference, data."""
    return f"{arch_label(arch, inference)} {LABELS[inference]}, {TRANSFORM_LABEL[transform]}"


def curves_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
                first: int | None = None, last: int | None = None, name: str = "fig4",
                **_: Any) -> Path:
    """Two panels (test error, test MSE) on log-log axes against m: one curve per triplet
    (colour: arch, marker: inference, line style: transform; `palette`), dashed / dotted
    fitted lines over the first / last segments with their slopes in the legend, hollow
    markers for points copied by Theorem 4.1, chance error (90% on CIFAR-10) dotted."""
    plt = pyplot()
    first, last = fit_defaults({"analysis": analysis_of(m)}, first, last)
    pts = curve_points(df)
    derived = derived_keys(df, ["inference", "arch", "transform", "m"])
    chance = chance_accuracy(df)
    keys = list(pts.groupby(["inference", "arch", "transform"], sort=False).groups)
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.2))
    for inf, arch, tr in keys:
        g = pts[(pts["inference"] == inf) & (pts["arch"] == arch) & (pts["transform"] == tr)]
        g = g.dropna(subset=["acc"])
        col = ARCH_COLORS[arch]
        hollow = [(inf, arch, tr, mm) in derived for mm in g["m"]]
        for ax, q in zip(axes, ("err", "mse"), strict=True):
            fits = segment_fits(g["m"], g[q], first=first, last=last)
            sl = "/".join(f"{fits[s].slope:+.2f}" if fits[s] is not None else "-"
                          for s in ("first", "last"))
            draw_points(ax, g["m"], g[q], color=col, marker=INFERENCE_MARKERS[inf],
                        ls=TRANSFORM_LINESTYLES[tr], derived=hollow,
                        label=f"{series_label(inf, arch, tr)}: {sl}")
            _draw_fit(ax, fits["first"], col, "--")
            _draw_fit(ax, fits["last"], col, ":")
    draw_chance(axes[0], None if chance is None else 1.0 - chance,
                label=None if chance is None else f"chance (error {1.0 - chance:g})")
    for ax, q in zip(axes, ("Test error", "Test MSE"), strict=True):
        loglog(ax)
        ax.set_xlabel("Training set size $m$")
        ax.set_ylabel(q)
        ax.grid(alpha=0.3, which="both", lw=0.5)
    handles, _labels = axes[0].get_legend_handles_labels()
    if has_derived(axes[0]):
        handles.append(derived_handle())
    return finish(fig, out, title(name, m, "learning curves with power-law fits"), handles,
                  ncol=2, legend_title=f"power-law slopes over the first {first} / last {last} "
                  "points (dashed / dotted)")
