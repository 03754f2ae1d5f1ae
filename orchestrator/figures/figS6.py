"""Fig. S6: NTK scaling laws. Exponents of the NTK learning curves per (arch, transform):
the slope of test MSE (and test error) against m on log-log axes over all sizes, with the
curves and their segment fits (`orchestrator.figures.fig4`)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    SHORT_T,
    TRANSFORM_LABEL,
    arch_label,
    chance_accuracy,
    derived_handle,
    derived_keys,
    draw_chance,
    draw_points,
    finish,
    has_derived,
    loglog,
    order,
    pyplot,
    title,
)
from orchestrator.figures.fig4 import curve_points, curves_table, points_and_fits
from orchestrator.figures.palette import CHANCE_COLOR, TRANSFORM_COLORS
from orchestrator.fits import segment_fits
from workers.vocab import ARCHS, TRANSFORMS


def figS6_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                first: int | None = None, last: int | None = None, **_: Any) -> str:
    """Exponents of the NTK learning curves: rows arch, columns transform; the MSE slope
    over all sizes (± stderr, R^2), then the full curves and segment fits."""
    pts, fits, first, last = points_and_fits(df, m, first, last)
    if fmt == "csv":
        return pts.to_csv(index=False) + "\n" + fits.to_csv(index=False)
    out = io.StringIO()
    out.write(f"figS6 [{m.get('preset')}]: NTK scaling-law exponents, slope of test MSE "
              "against m on log-log over all sizes (± stderr; R²)\n")
    allf = fits[(fits["segment"] == "all")]
    for q, label in (("mse", "test MSE"), ("err", "test error")):
        sub = allf[allf["quantity"] == q]
        tab = {}
        for r in sub.itertuples():
            se = f" ±{r.stderr:.3f}" if np.isfinite(r.stderr) else ""
            tab.setdefault(r.arch, {})[SHORT_T[r.transform]] = f"{r.slope:+.3f}{se} " \
                                                               f"({r.r2:.3f})"
        frame = pd.DataFrame(tab).T
        if len(frame):
            frame = frame.loc[order(frame.index, ARCHS),
                              [SHORT_T[t] for t in TRANSFORMS if SHORT_T[t] in frame.columns]]
        out.write(f"\n{label}\n{frame.fillna('-').to_string() if len(frame) else '(no fits)'}\n")
    out.write("\n" + curves_table(df, m, "text", first, last, name="figS6"))
    return out.getvalue()


def figS6_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
               first: int | None = None, last: int | None = None, **_: Any) -> Path:
    """One column per arch: NTK test MSE (top) and test error (bottom) against m on log-log,
    a line per transform in the palette's transform colours with its exponent (all-points
    fit) in the legend; points copied by Theorem 4.1 hollow; chance error dotted."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    pts = curve_points(df)
    derived = derived_keys(df, ["arch", "transform", "m"])
    chance = chance_accuracy(df)
    archs = order(pts["arch"].unique(), ARCHS)
    trs = order(pts["transform"].unique(), TRANSFORMS)
    na = max(len(archs), 1)
    fig, axes = plt.subplots(2, na, figsize=(2.4 * na, 4.6), squeeze=False)
    for j, arch in enumerate(archs):
        for i, q in enumerate(("mse", "err")):
            ax = axes[i][j]
            for tr in trs:
                g = pts[(pts["arch"] == arch) & (pts["transform"] == tr)].dropna(subset=["acc"])
                if not len(g):
                    continue
                f = segment_fits(g["m"], g[q], first=2, last=2)["all"]
                lab = f"{f.slope:+.2f}" if f is not None else "-"
                draw_points(ax, g["m"], g[q], color=TRANSFORM_COLORS[tr], lw=1.0, ms=3,
                            derived=[(arch, tr, mm) in derived for mm in g["m"]], label=lab)
            if i == 1:
                draw_chance(ax, None if chance is None else 1.0 - chance, unit="")
            loglog(ax)
            ax.grid(alpha=0.3, which="both", lw=0.5)
            slopes = [h for h in ax.get_legend_handles_labels()[0] if h.get_gid() != "chance"]
            ax.legend(handles=slopes, fontsize=6, title="slope", title_fontsize=6)
            if i == 0:
                ax.set_title(f"{arch_label(arch, 'ntk')} (NTK)")
            else:
                ax.set_xlabel("Training set size $m$")
        axes[0][0].set_ylabel("Test MSE")
        axes[1][0].set_ylabel("Test error")
    handles = [Line2D([], [], color=TRANSFORM_COLORS[t], marker="o", ms=3,
                      label=TRANSFORM_LABEL[t]) for t in trs]
    if any(has_derived(ax) for ax in axes.flat):
        handles.append(derived_handle())
    if chance is not None:
        handles.append(Line2D([], [], color=CHANCE_COLOR, ls=":",
                              label=f"chance (error {1.0 - chance:g})"))
    return finish(fig, out, title("figS6", m, "NTK scaling laws (legend: log-log slope over "
                                  "all m)"), handles)
