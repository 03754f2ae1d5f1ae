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
    agg,
    format_cell,
    order,
    pyplot,
    savefig,
    title,
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
    """Panels per transform: mean ± std bands of NN and NN+ against log2 width, NTK line."""
    plt = pyplot()
    cells = fig3_cells(df)
    trs = order(cells["transform"].unique(), TRANSFORMS)
    fig, axes = plt.subplots(1, max(len(trs), 1), figsize=(5.2 * max(len(trs), 1), 4.0),
                             sharey=True, squeeze=False)
    colors = {"nn": "tab:blue", "nn_plus": "tab:red", "nngp": "gray", "ntk": "black"}
    for ax, tr in zip(axes[0], trs, strict=False):
        sub = cells[cells["transform"] == tr]
        for inf in order(sub["inference"].unique(), INFERENCES):
            s = sub[sub["inference"] == inf]
            if s["width"].isna().all():
                lvl = 100 * float(s["mean"].iloc[0])
                ax.axhline(lvl, color=colors[inf], ls="--", lw=1.2,
                           label=f"{LABELS[inf]} VEC_inf ({lvl:.1f}%)")
                continue
            s = s.dropna(subset=["mean"])
            x = np.log2(s["width"].astype(float).to_numpy())
            mu, sd = 100 * s["mean"].to_numpy(), 100 * s["std"].fillna(0).to_numpy()
            ax.plot(x, mu, "o-", color=colors[inf], label=LABELS[inf])
            ax.fill_between(x, mu - sd, mu + sd, color=colors[inf], alpha=0.2)
        ax.set_title(f"VEC_n on {SHORT_T[tr]} data")
        ks = sorted({int(round(k)) for k in np.log2(sub["width"].dropna().astype(float))})
        ax.set_xticks(ks, [f"$2^{{{k}}}$" for k in ks])  # the paper's dyadic widths
        ax.set_xlabel("width n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("best test accuracy (%)")
    fig.suptitle(title("fig3", m, "accuracy against width (mean ± std over seeds)"))
    fig.tight_layout()
    return savefig(fig, out)

