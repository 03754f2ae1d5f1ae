"""Fig. S5: Gaussian vs uniform first-layer initialisation of equal variance, NN best test
accuracy per (arch, transform)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    SHORT_T,
    TRANSFORM_LABEL,
    agg,
    arch_label,
    chance_accuracy,
    chance_handles,
    draw_chance,
    finish,
    format_cell,
    order,
    pyplot,
    title,
)
from orchestrator.figures.palette import ARCH_COLORS, KEY_COLOR, TRANSFORM_MARKERS
from workers.vocab import ARCHS, FIRST_LAYER_INITS, TRANSFORMS

log = logging.getLogger("symsweep")


def figS5_cells(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arch, tr, init), g in df.groupby(["arch", "transform", "first_layer_init"],
                                          sort=False):
        mean, std, n = agg(g.loc[g["ok"], "best_test_acc"])
        rows.append((arch, tr, init, mean, std, n, len(g)))
    cells = pd.DataFrame(rows, columns=["arch", "transform", "first_layer_init", "mean", "std",
                                       "n_success", "n_finished"])
    key = cells["arch"].map({k: i for i, k in enumerate(ARCHS)}) * 100 + \
        cells["transform"].map({k: i for i, k in enumerate(TRANSFORMS)}) * 10 + \
        (cells["first_layer_init"] == "uniform")
    return cells.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def figS5_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", **_: Any) -> str:
    cells = figS5_cells(df)
    if fmt == "csv":
        return cells.to_csv(index=False)
    trs = order(cells["transform"].unique(), TRANSFORMS)
    rows, index = [], []
    for arch in order(cells["arch"].unique(), ARCHS):
        for init in FIRST_LAYER_INITS:
            s = cells[(cells["arch"] == arch) & (cells["first_layer_init"] == init)]
            by_t = {r.transform: r for r in s.itertuples()}
            rows.append([format_cell(by_t[t].mean, by_t[t].std, by_t[t].n_success,
                                     by_t[t].n_finished) if t in by_t else "" for t in trs])
            index.append((arch, init))
        g = cells[(cells["arch"] == arch)].pivot_table(index="transform",
                                                        columns="first_layer_init",
                                                        values="mean", dropna=False)
        diff = [f"{100 * (g.loc[t, 'uniform'] - g.loc[t, 'gaussian']):+.1f}"
                if t in g.index and set(FIRST_LAYER_INITS) <= set(g.columns)
                and np.isfinite(g.loc[t, "uniform"] - g.loc[t, "gaussian"]) else ""
                for t in trs]
        rows.append(diff)
        index.append((arch, "uniform - gaussian"))
    frame = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["arch", "init"]),
                         columns=[SHORT_T[t] for t in trs])
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        body = frame.to_string()
    return (f"figS5 [{m.get('preset')}]: NN best test accuracy in %, first layer Gaussian vs "
            f"uniform of equal variance (mean ± std, successful/finished)\n{body}\n")


def figS5_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, **_: Any) -> Path:
    """Scatter of every (arch, transform) cell: Gaussian (x) against uniform (y) first-layer
    accuracy with std error bars, colour = arch, marker = transform (`palette`); the diagonal
    is 'no change', dotted lines chance. A cell without a successful run of both inits is
    no point: named under the figure ("not drawn: ...") and in a warning."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    cells = figS5_cells(df)
    chance = chance_accuracy(df)
    piv = cells.pivot_table(index=["arch", "transform"], columns="first_layer_init",
                            values=["mean", "std"])
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    lo, hi = np.inf, -np.inf
    archs, trs = set(), set()
    left_out = []  # cells that cannot be a point: said under the figure and in the log
    for (arch, tr), r in piv.iterrows():
        x, y = (100 * r.get(("mean", init), np.nan) for init in FIRST_LAYER_INITS)
        xe, ye = (100 * r.get(("std", init), np.nan) for init in FIRST_LAYER_INITS)
        if not (np.isfinite(x) and np.isfinite(y)):
            lacks = [init for init, v in (("Gaussian", x), ("uniform", y)) if not np.isfinite(v)]
            left_out.append(f"{arch.upper()} {SHORT_T[tr]} (no successful "
                            f"{' or '.join(lacks)} run)")
            continue
        ax.errorbar(x, y, xerr=np.nan_to_num(xe), yerr=np.nan_to_num(ye),
                    fmt=TRANSFORM_MARKERS[tr], color=ARCH_COLORS[arch], ms=5, capsize=2,
                    elinewidth=0.7)
        archs.add(arch)
        trs.add(tr)
        lo, hi = min(lo, x, y), max(hi, x, y)
    if np.isfinite(lo):
        pad = 0.05 * max(hi - lo, 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        # one scale on both axes: distance from the diagonal reads as the change
        ax.set_xlim(lo - 2 * pad, hi + 2 * pad)
        ax.set_ylim(lo - 2 * pad, hi + 2 * pad)
        ax.set_aspect("equal")
    if chance is not None:
        draw_chance(ax, 100 * chance)
        draw_chance(ax, 100 * chance, horizontal=False)
    ax.set_xlabel("Test accuracy (%), Gaussian first layer")
    ax.set_ylabel("Test accuracy (%), uniform")
    ax.grid(alpha=0.3, lw=0.5)
    handles = [Line2D([], [], ls="none", marker="o", color=ARCH_COLORS[a],
                      label=arch_label(a, "nn")) for a in order(archs, ARCHS)]
    handles += [Line2D([], [], ls="none", marker=TRANSFORM_MARKERS[t], color=KEY_COLOR,
                       label=TRANSFORM_LABEL[t]) for t in order(trs, TRANSFORMS)]
    handles += [Line2D([], [], color="k", ls="--", lw=0.8, label="no change")]
    if chance is not None:
        handles += chance_handles(ax)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if left_out:
        note = f"not drawn: {', '.join(left_out)}"
        log.warning("figS5: %s", note)
        fig.text(0.01, 0.0, textwrap.fill(note, 110), fontsize=6, ha="left", va="top")
    return finish(fig, out, title("figS5", m, "Gaussian vs uniform first-layer initialisation"))
