"""Fig. 3: VEC_n best test accuracy against width n (mean ± std over successful seeds) per
inference (NN, NN+) and transform, with the VEC_inf kernel level (paper Sec. 5, Fig. 3)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    LABELS,
    SHORT_T,
    TRANSFORM_LABEL,
    agg,
    arch_label,
    chance_accuracy,
    chance_handles,
    derived_keys,
    draw_chance,
    finish,
    format_cell,
    has_derived,
    order,
    pyplot,
    title,
)
from orchestrator.figures.palette import (
    DERIVED_LABEL,
    INFERENCE_COLORS,
    INFERENCE_MARKERS,
    KEY_COLOR,
)
from workers.vocab import INFERENCES, TRANSFORMS


def fig3_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (inference, transform, width): mean, std, n_success, n_finished of
    best_test_acc (width NaN for kernel cells)."""
    rows = []
    for (inf, tr, w), g in df.groupby(["inference", "transform", df["width"].fillna(-1)],
                                      sort=False):
        mean, std, n = agg(g.loc[g["ok"], "best_test_acc"])
        rows.append((inf, tr, None if w == -1 else int(w), mean, std, n, len(g)))
    cells = pd.DataFrame(rows, columns=["inference", "transform", "width", "mean", "std",
                                       "n_success", "n_finished"])
    key = cells["inference"].map({k: i for i, k in enumerate(INFERENCES)}) * 1e9 + \
        cells["transform"].map({k: i for i, k in enumerate(TRANSFORMS)}) * 1e6 + \
        cells["width"].fillna(0).astype(float)
    return cells.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def fig3_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", **_: Any) -> str:
    cells = fig3_cells(df)
    if fmt == "csv":
        return cells.to_csv(index=False)
    out = io.StringIO()
    out.write(f"fig3 [{m.get('preset')}]: VEC best test accuracy in % against width, mean ± std "
              "over successful runs (successful/finished)\n")
    widths = sorted(int(w) for w in cells["width"].dropna().unique())
    for tr in order(cells["transform"].unique(), TRANSFORMS):
        sub = cells[cells["transform"] == tr]
        out.write(f"\n{SHORT_T[tr]}\n")
        tab = {}
        for inf in order(sub["inference"].unique(), INFERENCES):
            s = sub[sub["inference"] == inf]
            if s["width"].isna().all():
                r = s.iloc[0]
                tab[f"{LABELS[inf]} (VEC_inf)"] = {"level": format_cell(
                    r["mean"], r["std"], r["n_success"], r["n_finished"])}
                continue
            tab[LABELS[inf]] = {f"n={int(r.width)}": format_cell(r.mean, r.std, r.n_success,
                                                                 r.n_finished)
                                for r in s.itertuples()}
        frame = pd.DataFrame(tab).T
        cols = [c for c in [f"n={w}" for w in widths] + ["level"] if c in frame.columns]
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            out.write(frame[cols].fillna("").to_string() + "\n")
    return out.getvalue()


def fig3_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, **_: Any) -> Path:
    """Panels per transform: mean ± std bands of NN and NN+ against width n (log2 axis, the
    paper's dyadic widths), the VEC_inf kernel level as a dashed line with its value written
    at its end (thin and marked "copied" when Theorem 4.1 copied it from another
    transform's), chance dotted; one legend under the panels. Colours and markers:
    `palette.INFERENCE_*`."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    cells = fig3_cells(df)
    derived = derived_keys(df[df["width"].isna()], ["inference", "transform"])
    chance = chance_accuracy(df)
    trs = order(cells["transform"].unique(), TRANSFORMS)
    n = max(len(trs), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.0), sharey=True, squeeze=False)
    handles: dict[str, Any] = {}
    top = 0.0
    for ax, tr in zip(axes[0], trs, strict=False):
        sub = cells[cells["transform"] == tr]
        for inf in order(sub["inference"].unique(), INFERENCES):
            s = sub[sub["inference"] == inf]
            col = INFERENCE_COLORS[inf]
            if s["width"].isna().all():
                lvl = 100 * float(s["mean"].iloc[0])
                copied = (inf, tr) in derived
                name = f"{LABELS[inf]}, " + arch_label("vec", inf)
                line = ax.axhline(lvl, color=col, ls="--", lw=0.8 if copied else 1.2,
                                  label=name)
                ax.annotate(f"{lvl:.1f}%" + (" (copied)" if copied else ""), (1.0, lvl),
                            xycoords=("axes fraction", "data"), xytext=(-2, 3),
                            textcoords="offset points", ha="right", fontsize=7, color=col)
                if copied:
                    line.set_gid("derived")
                handles.setdefault(name, Line2D([], [], color=col, ls="--", lw=1.2,
                                                label=f"{name} (level)"))
                top = max(top, lvl)
                continue
            s = s.dropna(subset=["mean"])
            x = np.log2(s["width"].astype(float).to_numpy())
            mu, sd = 100 * s["mean"].to_numpy(), 100 * s["std"].fillna(0).to_numpy()
            name = f"{LABELS[inf]}, " + arch_label("vec", inf)
            ax.plot(x, mu, "-", marker=INFERENCE_MARKERS[inf], ms=4, color=col, label=name)
            ax.fill_between(x, mu - sd, mu + sd, color=col, alpha=0.2, lw=0)
            handles.setdefault(name, ax.get_lines()[-1])
            top = max(top, float(np.nanmax(mu + sd)) if len(mu) else 0.0)
        draw_chance(ax, None if chance is None else 100 * chance)
        ax.set_title(f"{arch_label('vec', 'nn')} on {TRANSFORM_LABEL[tr]}")
        ks = sorted({int(round(k)) for k in np.log2(sub["width"].dropna().astype(float))})
        ax.set_xticks(ks, [f"$2^{{{k}}}$" for k in ks])  # the paper's dyadic widths
        ax.set_xlabel("Width $n$")
        ax.grid(alpha=0.3, lw=0.5)
    axes[0][0].set_ylim(0, max(top * 1.12, 20.0))
    axes[0][0].set_ylabel("Test accuracy (%)")
    legend = list(handles.values()) + chance_handles(axes[0][0])
    if any(has_derived(ax) for ax in axes[0]):
        legend.append(Line2D([], [], color=KEY_COLOR, ls="--", lw=0.8,
                             label=f"level {DERIVED_LABEL}"))
    return finish(fig, out, title("fig3", m, "test accuracy against width, mean ± std over "
                                  "seeds"), legend, ncol=3)
