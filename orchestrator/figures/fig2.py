"""Fig. 2: test accuracy of every (inference, arch, transform) cell (paper Sec. 4, Fig. 2).

`fig2_cells` aggregates the latest attempt of every trial into cells: mean and sample std of
a metric (default ``best_test_acc``) over *successful* runs, with counts (successful /
finished; the successes that diverged or failed after reaching the threshold are said beside
them, `orchestrator.analysis`). `fig2_layout` lays the cells out like the paper's Fig. 2
(rows = inference x arch, columns = transforms), `plot_fig2` draws its panels (NTK, NN, NN+).
`table` / `plot` are the registry's entry points; a sweep without a figure of its own is
tabulated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import (
    DEFAULT_SUCCESS_TRAIN_ACC,
    failed_successes,
    success_threshold,
    successful,
)
from orchestrator.figures.common import (
    LABELS,
    SHORT_T,
    TRANSFORM_LABEL,
    arch_label,
    chance_accuracy,
    chance_handles,
    derived_keys,
    draw_chance,
    finish,
    format_cell,
    metric_label,
    metric_unit,
    pyplot,
    title,
)
from orchestrator.figures.palette import DERIVED_HATCH, DERIVED_LABEL, KEY_COLOR, TRANSFORM_COLORS
from workers.vocab import ARCHS, INFERENCES, TRANSFORMS


def fig2_cells(df: pd.DataFrame, success_train_acc: float = DEFAULT_SUCCESS_TRAIN_ACC,
               metric: str = "best_test_acc") -> pd.DataFrame:
    """One row per (inference, arch, transform): mean, std (ddof=1; 0 for one run),
    n_success, n_finished (completed + diverged + failed), has_metric (False when no attempt
    of the cell has the metric at all, e.g. eta0 for a kernel cell: the table says n/a),
    n_success_not_completed (successes whose run then diverged or failed; the text table says
    them, the csv leaves the column out)."""
    cols = ["inference", "arch", "transform", "mean", "std", "n_success", "n_finished",
            "has_metric", "n_success_not_completed"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df.copy()
    d["_ok"] = successful(d, success_train_acc).to_numpy()
    d["_bad_ok"] = failed_successes(d, success_train_acc).to_numpy()
    out = []
    for (inf, arch, tr), g in d.groupby(["inference", "arch", "transform"], sort=False):
        ok = g["_ok"] & g[metric].notna()
        vals = g.loc[ok, metric].astype(float).to_numpy()
        mean = float(vals.mean()) if len(vals) else math.nan
        std = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
        out.append((inf, arch, tr, mean, std, len(vals), len(g),
                    bool(g[metric].notna().any()), int((ok & g["_bad_ok"]).sum())))
    cells = pd.DataFrame(out, columns=cols)
    order_i = {k: i for i, k in enumerate(INFERENCES)}
    order_a = {k: i for i, k in enumerate(ARCHS)}
    order_t = {k: i for i, k in enumerate(TRANSFORMS)}
    key = cells["inference"].map(order_i) * 10_000 + cells["arch"].map(order_a) * 100 + \
        cells["transform"].map(order_t)
    return cells.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def fig2_layout(cells: pd.DataFrame, percent: bool = True) -> pd.DataFrame:
    """Rows = (inference, arch), columns = transforms, strings 'mean ± std (n_ok/n)' (x100
    when ``percent``, i.e. an accuracy), "n/a" for a cell none of whose attempts has the
    metric (a kernel cell has no eta0 or steps)."""
    transforms = [t for t in TRANSFORMS if t in set(cells["transform"])]
    rows = []
    index = []
    for (inf, arch), g in cells.groupby(["inference", "arch"], sort=False):
        by_t = {r.transform: r for r in g.itertuples()}
        rows.append([("" if t not in by_t else
                      "n/a" if not getattr(by_t[t], "has_metric", True) else
                      format_cell(by_t[t].mean, by_t[t].std, by_t[t].n_success,
                                  by_t[t].n_finished, percent=percent,
                                  not_completed=getattr(by_t[t], "n_success_not_completed",
                                                        0)))
                     for t in transforms])
        index.append((LABELS.get(inf, inf), arch))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["inference", "arch"]),
                        columns=[SHORT_T[t] for t in transforms])


PANEL_TITLE = {"ntk": "NTK (infinite width)", "nngp": "NNGP (infinite width)",
               "nn": "NN (finite width, SGD)", "nn_plus": "NN+ (SGD, 8x learning rate, L2)"}


def plot_fig2(cells: pd.DataFrame, out: str | Path, title: str = "", *,
              derived: Collection[tuple] = (), chance: float | None = None,
              metric: str = "best_test_acc") -> Path:
    """Write the Fig. 2 figure (``out`` and its PNG / PDF / SVG siblings, `common.savefig`):
    one panel per inference (NTK, NN, NN+ when present), grouped bars of the metric per arch
    (paper names, VEC_n / VEC_inf), one bar per transform in the palette's transform colours,
    error bars = std over successful seeds. ``derived``: (inference, arch, transform) cells
    copied by Theorem 4.1, drawn hollow and hatched; ``chance``: accuracy fraction drawn as a
    dotted line (accuracy metrics only)."""
    from matplotlib.patches import Patch

    plt = pyplot()
    label, factor, is_acc = metric_label(metric)
    derived = set(derived)
    infs = [i for i in INFERENCES if i in set(cells["inference"])]
    archs = [a for a in ARCHS if a in set(cells["arch"])]
    transforms = [t for t in TRANSFORMS if t in set(cells["transform"])]
    n = max(len(infs), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.0), sharey=True, squeeze=False)
    width = 0.8 / max(len(transforms), 1)
    for ax, inf in zip(axes[0], infs, strict=False):
        sub = cells[cells["inference"] == inf]
        for j, t in enumerate(transforms):
            means, stds, hollow = [], [], []
            for a in archs:
                r = sub[(sub["arch"] == a) & (sub["transform"] == t)]
                means.append(factor * float(r["mean"].iloc[0]) if len(r) else np.nan)
                stds.append(factor * float(r["std"].iloc[0]) if len(r) else 0.0)
                hollow.append((inf, a, t) in derived)
            x = np.arange(len(archs)) + (j - (len(transforms) - 1) / 2) * width
            col = TRANSFORM_COLORS[t]
            bars = ax.bar(x, means, width, yerr=np.nan_to_num(stds), color=col,
                          edgecolor=col, linewidth=0.6, capsize=1.5,
                          error_kw={"elinewidth": 0.7, "capthick": 0.7},
                          label=TRANSFORM_LABEL[t])
            for bar, h in zip(bars, hollow, strict=True):
                if h:  # copied, not computed: the transform's colour as hatching only
                    bar.set_facecolor("white")
                    bar.set_hatch(DERIVED_HATCH)
                    bar.set_gid("derived")
        ax.set_xticks(np.arange(len(archs)), [arch_label(a, inf) for a in archs])
        ax.set_title(PANEL_TITLE.get(inf, LABELS.get(inf, inf)))
        ax.grid(axis="y", alpha=0.3, lw=0.5)
        ax.set_axisbelow(True)
        if is_acc:
            ax.set_ylim(bottom=0)
            draw_chance(ax, None if chance is None else factor * chance)
    axes[0][0].set_ylabel(label)
    handles = [Patch(facecolor=TRANSFORM_COLORS[t], edgecolor=TRANSFORM_COLORS[t],
                     label=TRANSFORM_LABEL[t]) for t in transforms]
    if derived & {(r.inference, r.arch, r.transform) for r in cells.itertuples()}:
        handles.append(Patch(facecolor="white", edgecolor=KEY_COLOR, hatch=DERIVED_HATCH,
                             label=DERIVED_LABEL))
    handles += chance_handles(axes[0][0])
    return finish(fig, out, title, handles)


def table(df: pd.DataFrame, m: dict[str, Any], fmt: str = "text", *, sweep: str = "fig2",
          metric: str = "best_test_acc", **_: Any) -> str:
    """The Fig. 2 table of ``metric`` (text: the paper's layout, accuracies in %, other
    metrics as stored with their unit in the header; csv: one row per cell, as stored)."""
    cells = fig2_cells(df, success_threshold(m), metric)
    if fmt == "csv":  # the columns scripts read, unchanged (a cell without the metric: no mean)
        return cells.drop(columns=["has_metric", "n_success_not_completed"]).to_csv(
            index=False)
    unit = metric_unit(metric)
    head = (f"{sweep} [{m['preset']}]: {metric} in {unit}, mean ± std over successful runs "
            f"(successful/finished; success = a completed kernel cell, a finite net whose "
            f"best train acc reached {m.get('success_train_acc')} whatever its final status; "
            "'n diverged/failed' = successes that did not complete)")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        return head + "\n" + fig2_layout(cells, percent=unit == "%").to_string() + "\n"


def plot(df: pd.DataFrame, m: dict[str, Any], out: str | Path, *, sweep: str = "fig2",
         metric: str = "best_test_acc", **_: Any) -> Path:
    """Write the Fig. 2 figure of ``metric`` to ``out`` (and its format siblings)."""
    cells = fig2_cells(df, success_threshold(m), metric)
    label = metric_label(metric)[0].split(" (")[0]
    what = label[:1].lower() + label[1:]  # "Test MSE" -> "test MSE", not "test mse"
    return plot_fig2(cells, out, title=title(sweep, m, f"{what} by data, model and inference"),
                     derived=derived_keys(df, ["inference", "arch", "transform"]),
                     chance=chance_accuracy(df), metric=metric)
