"""The learning curve of one trial: its per-step history (losses and accuracies against the
training step) from the results' ``history`` view, for ``symsweep plot TRIAL_ID`` and
``symsweep plot SWEEP --curves TRIAL_ID`` (issue 15 item 5).

The history of a trial's latest attempt is the whole curve: a resumed attempt starts from its
checkpoint, whose meta carries the evaluations before it (`workers/checkpoint.py`), so nothing is
stitched across attempts here. Kernel trials (NTK / NNGP regression) have no steps and hence no
curve; asking for one is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    LABELS,
    TRANSFORM_LABEL,
    arch_label,
    draw_chance,
    finish,
    plain_log_labels,
    pyplot,
)
from orchestrator.figures.palette import SPLIT_COLORS
from orchestrator.layout import ResultsLayout
from orchestrator.results import NoSuchTrial
from workers.errors import ConfigError

# (metric in the history, legend label, split for the colour, factor drawn); in the paper's
# words (Sec. 3). The minibatch loss the optimiser sees is 0.5 * mean((f - y)^2) without the
# L2 term (workers/train.py), the MSEs are mean((f - y)^2): drawn as is, the factor 2 between
# them would read as a train / test gap, so the loss is drawn x2, as the MSE of the minibatches.
LOSS_METRICS = (("train_loss", "training MSE (minibatches, 2 × loss, no L2)", "train", 2.0),
                ("train_mse", "training MSE", "train", 1.0),
                ("val_mse", "validation MSE", "val", 1.0),
                ("test_mse", "test MSE", "test", 1.0))
ACC_METRICS = (("train_acc", "training", "train"), ("val_acc", "validation", "val"),
               ("test_acc", "test", "test"))


def find_trial(results: str, trial_id: str, sweep: str | None = None
               ) -> tuple[pd.Series, pd.DataFrame]:
    """(the trial's latest-attempt row, its history: step, metric, value sorted by step) for
    a full trial id or a unique prefix (`orchestrator.results.resolve_trial`, the one resolver),
    in ``sweep`` or in every sweep under ``results``. Raises `NoSuchTrial` (a ConfigError: one
    line, exit 2) when nothing or several trials match or the trial has no result yet;
    ConfigError when ``sweep`` was never run."""
    from orchestrator.results import connect, resolve_trial

    sw, tid = resolve_trial(trial_id, results, sweep)
    con = connect(sw, results)
    rows = con.execute("select * from trials where trial_id = ?", [tid]).df()
    if rows.empty:
        raise NoSuchTrial(f"trial {tid} of sweep '{sw}' has no result yet (not run); "
                          f"`symsweep resume {sw} --results {results}` runs it")
    row = rows.iloc[0]
    hist = con.execute("select step, metric, value from history where sweep = ? and "
                       "trial_id = ? and attempt = ? order by step, metric",
                       [sw, tid, int(row["attempt"])]).df()
    return row, hist


def trial_curves(results: str, trial_id: str, sweep: str | None = None,
                 out: str | Path | None = None) -> Path:
    """Draw one trial's learning curve: left, MSEs mean((f-y)^2) against the step (log y),
    the minibatch training loss 0.5 * mean((f-y)^2) drawn x2 so it is on the same scale
    (labelled "2 × loss", `LOSS_METRICS`); right,
    training / validation / test accuracy in % with chance dotted and the best test accuracy
    starred. Written to ``out`` (default ``<results>/<sweep>/curves/<trial_id>.png``) and its
    PDF / SVG siblings; returns ``out``. Raises `NoSuchTrial`, or ConfigError for a trial
    without steps (a kernel trial, or one that failed before its first evaluation)."""
    from orchestrator.figures.common import chance_accuracy, outputs

    if out is not None:
        outputs(out)  # a bad file name fails before anything is read
    row, hist = find_trial(results, trial_id, sweep)
    tid, sw = str(row["trial_id"]), str(row["sweep"])
    if row["kind"] == "kernel" or hist.empty:  # a kernel trial stores its one result at step 0
        why = ("kernel regression has no training steps" if row["kind"] == "kernel" else
               f"its latest attempt ({row['status']}) recorded no evaluation")
        raise ConfigError(f"trial {tid} of sweep '{sw}' has no learning curve: {why}; "
                          f"`symsweep table {sw}` shows its result")
    wide = hist.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
    plt = pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(7.0, 2.9))
    for key, label, split, factor in LOSS_METRICS:
        if key in wide and np.isfinite(wide[key]).any():
            ax_l.plot(wide.index, factor * wide[key], color=SPLIT_COLORS[split],
                      ls="-" if key != "train_loss" else "--", lw=1.2, label=label)
    ax_l.set_yscale("log")
    plain_log_labels(ax_l.yaxis, *ax_l.get_ylim())
    ax_l.set_ylabel("MSE, mean((f - y)$^2$)")
    for key, label, split in ACC_METRICS:
        if key in wide and np.isfinite(wide[key]).any():
            ax_a.plot(wide.index, 100 * wide[key], "-", marker=".", ms=3,
                      color=SPLIT_COLORS[split], lw=1.2, label=label)
    if "test_acc" in wide and np.isfinite(wide["test_acc"]).any():
        best = wide["test_acc"].idxmax()
        ax_a.plot([best], [100 * wide["test_acc"].max()], "*", ms=9,
                  color=SPLIT_COLORS["test"], label="best test")
    draw_chance(ax_a, None if (c := chance_accuracy(pd.DataFrame([row]))) is None else 100 * c)
    ax_a.set_ylim(bottom=0)
    ax_a.set_ylabel("Accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("Training step")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend()
    return finish(fig, out or ResultsLayout(results, sw).curves(tid), _describe(row))


def _describe(row: Any) -> str:
    """Two title lines: what was trained, and where the row comes from."""
    what = (f"{arch_label(row['arch'], row['inference'])} "
            f"{LABELS.get(row['inference'], row['inference'])} on "
            f"{TRANSFORM_LABEL.get(row['transform'], row['transform'])}, seed {row['seed']}")
    return (f"{what}\nsweep {row['sweep']} ({row['preset']} preset), trial "
            f"{row['trial_id']}, attempt {row['attempt']}, {row['status']}")
