"""Fig. S4: ImageNet training dynamics of the ResNet family under identity, O(3)^d and P(3d)
(sweeps/figS4.py; paper App. F.2): test top-1 accuracy against the epoch, per depth and
transform, from every trial's per-epoch history (all attempts: a resumed trial's curve
continues where its checkpoint left off), the mean over the runs (seeds; the paper preset has
the caption's 3) with their range shaded, and a table of the final and best accuracy (means
over the runs, with the runs per cell).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.figures.common import chance_handles, draw_chance, finish, pyplot, title
from orchestrator.figures.fig5 import (
    PAPER_NOTE,
    PLOT_TRANSFORM_LABEL,
    TRANSFORM_LABEL,
    TRANSFORM_ORDER,
    arch_label,
    chance,
    finished,
    first_config,
    order_key,
    stand_in,
)
from orchestrator.figures.palette import (
    CHANCE_COLOR,
    KEY_COLOR,
    TRANSFORM_COLORS,
    TRANSFORM_MARKERS,
)


def epoch_curves(df: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """(arch, transform, epoch, test_acc) from the history rows of the trials in ``df``: for
    each trial and step the latest attempt's value (a resumed attempt continues the curve)."""
    h = history[history["trial_id"].isin(set(df["trial_id"]))
                & history["metric"].isin(["epoch", "test_acc"])]
    if h.empty:
        return pd.DataFrame(columns=["arch", "transform", "epoch", "test_acc", "trial_id"])
    h = h.sort_values("attempt").drop_duplicates(["trial_id", "step", "metric"], keep="last")
    wide = h.pivot_table(index=["trial_id", "step"], columns="metric", values="value")
    wide = wide.dropna(subset=[c for c in ("epoch", "test_acc") if c in wide]).reset_index()
    meta = df.set_index("trial_id")[["arch", "transform"]]
    wide = wide.join(meta, on="trial_id")
    return wide[["arch", "transform", "epoch", "test_acc", "trial_id"]].sort_values(
        ["arch", "transform", "epoch"]).reset_index(drop=True)


def figS4_text(df: pd.DataFrame, m: Mapping[str, Any], history: pd.DataFrame,
                fmt: str = "text") -> str:
    """Final and best test accuracy (%) per ResNet depth and transform, and the epochs run."""
    cur = epoch_curves(df, history)
    rows = []
    for (a, t), g in df.groupby(["arch", "transform"], sort=False):
        c = cur[(cur["arch"] == a) & (cur["transform"] == t)]
        rows.append((a, t, float(pd.to_numeric(g["test_acc"], errors="coerce").mean()),
                     float(pd.to_numeric(g["best_test_acc"], errors="coerce").mean()),
                     float(c["epoch"].max()) if len(c) else math.nan, len(g)))
    t = pd.DataFrame(rows, columns=["arch", "transform", "final", "best", "epochs", "runs"])
    if fmt == "csv":
        return t.to_csv(index=False) + "\n" + cur.to_csv(index=False)
    t["_a"] = t["arch"].map(lambda a: order_key(a)[0])
    t = t.sort_values("_a")
    out = io.StringIO()
    out.write(f"figS4 [{m.get('preset')}]: test top-1 accuracy (%), final / best over "
              "training, per depth and transform (means over the runs)\n")
    wide = {}
    for r in t.itertuples():
        key = arch_label(r.arch, first_config(df, r.arch))
        wide.setdefault(key, {})[TRANSFORM_LABEL.get(r.transform, r.transform)] = (
            f"{100 * r.final:.2f} / {100 * r.best:.2f}")
    if not wide:
        out.write("(no finished trials yet)\n")
        return out.getvalue()
    frame = pd.DataFrame(wide).T
    cols = [TRANSFORM_LABEL[x] for x in TRANSFORM_ORDER if TRANSFORM_LABEL[x] in frame]
    with pd.option_context("display.width", 300):
        out.write(frame[cols].fillna("-").to_string() + "\n")
    ep, runs = t["epochs"].dropna(), t["runs"]
    out.write(f"epochs run: {int(ep.min()) if len(ep) else 0}"
              f"{'' if ep.nunique() <= 1 else f'..{int(ep.max())}'}; "
              f"runs per cell: {int(runs.min())}"
              f"{'' if runs.nunique() <= 1 else f'..{int(runs.max())}'}; "
              f"{PAPER_NOTE['figS4']}\n")
    return out.getvalue()


def figS4_figure(df: pd.DataFrame, m: Mapping[str, Any], history: pd.DataFrame,
                 out: str | Path) -> Path | str:
    """One panel per ResNet depth: test accuracy against the epoch, one line per transform
    (`palette.TRANSFORM_COLORS`): the mean over the runs (seeds) at each epoch, their range
    (min to max) shaded where a cell has more than one run; the chance level and the paper's
    35% bound for P(3d)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    cur = epoch_curves(df, history)
    archs = sorted(df["arch"].unique(), key=lambda a: order_key(a)[0])
    n = max(len(archs), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols + 0.4, 2.1 * rows),
                             squeeze=False, sharey=True)
    lvl = chance(df)
    shown: list[str] = []
    spread = False
    for k, a in enumerate(archs):
        ax = axes[k // cols][k % cols]
        for t in TRANSFORM_ORDER:
            c = cur[(cur["arch"] == a) & (cur["transform"] == t)]
            if len(c):
                g = c.groupby("epoch")["test_acc"].agg(["mean", "min", "max", "count"])
                ax.plot(g.index, 100 * g["mean"].to_numpy(), color=TRANSFORM_COLORS[t],
                        marker=TRANSFORM_MARKERS[t], ms=3, lw=1.3)
                if c["trial_id"].nunique() > 1:
                    ax.fill_between(g.index, 100 * g["min"].to_numpy(),
                                    100 * g["max"].to_numpy(), color=TRANSFORM_COLORS[t],
                                    alpha=0.2, lw=0)
                    spread = True
                shown += [t] if t not in shown else []
        ax.axhline(35, color=CHANCE_COLOR, ls="--", lw=0.8, zorder=0.5)
        draw_chance(ax, None if lvl is None else 100 * lvl)
        ax.set_title(arch_label(a, first_config(df, a)))
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if k % cols == 0:
            ax.set_ylabel("Test top-1 accuracy (%)")
    for k in range(len(archs), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [Line2D([], [], color=TRANSFORM_COLORS[t], marker=TRANSFORM_MARKERS[t], ms=3,
                      label=PLOT_TRANSFORM_LABEL[t]) for t in shown]
    if spread:
        runs = int(df.groupby(["arch", "transform"]).size().max())
        handles.append(Patch(facecolor=KEY_COLOR, alpha=0.2, lw=0,
                             label=f"range over runs (up to {runs}); line: mean"))
    handles.append(Line2D([], [], color=CHANCE_COLOR, ls="--", lw=0.8,
                          label="paper: $P(3d)$ < 35% on ImageNet"))
    handles += chance_handles(axes[0][0])
    return finish(fig, out, title("figS4", m, "training dynamics of the ResNet family"
                                  + stand_in(m)), handles, ncol=3)


def history(m: Mapping[str, Any], results: str) -> pd.DataFrame:
    """Every history row (trial_id, attempt, step, metric, value) of the manifest's sweep."""
    from orchestrator.results import load as load_view

    return load_view(m["sweep"], results, view="history")


def table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
          results: str = "results", **_: Any) -> str:
    """The registry's table entry: final / best accuracy per depth and transform."""
    ok, note = finished(df)
    return figS4_text(ok, m, history(m, results), fmt) + (note if fmt == "text" else "")


def plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, results: str = "results",
         **_: Any) -> Path | str:
    """The registry's plot entry: accuracy against epoch, one panel per depth."""
    return figS4_figure(finished(df)[0], m, history(m, results), out)


__all__ = ["epoch_curves", "history", "plot", "table"]
