"""The one definition of a successful run, shared by the tables and figures
(`orchestrator.figures`) and the MLflow ``success`` tag (`orchestrator.tracking`).

App. B.1 of the paper: "Among the successful runs (with training accuracy >= 95%), we pick the
highest test accuracy along training". So a finite network succeeds when its best training
accuracy along training reached the preset's ``success_train_acc`` (0.95 in the paper), whatever
its final status: a run that reached 95% and then diverged, or failed (a crash, retries spent),
counts with the best test accuracy it reached, and its row keeps its status (the tables say how
many of a cell's successes did not complete, `failed_successes`). An ``interrupted`` attempt (a
stop request) is not a finished run and never counts; the store's loaders keep only the latest
attempt of each trial (`Store.load_finished`), so an earlier attempt never counts either. Kernel
cells succeed when they completed (a diverged kernel regression has no usable prediction).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workers.vocab import Status

DEFAULT_SUCCESS_TRAIN_ACC = 0.95  # the paper's; a manifest always records the preset's own
# the final statuses of a finite run that ran (the store's STATUSES without "interrupted")
RAN_STATUSES = (Status.COMPLETED, Status.DIVERGED, Status.FAILED)


def success_threshold(manifest: Mapping[str, Any] | None) -> float:
    """The train-accuracy threshold of `successful` for a sweep: its manifest's
    ``success_train_acc`` (the preset's), the paper's 0.95 for a manifest that predates it.
    Tables, figures and the MLflow ``success`` tag all take it from here."""
    v = (manifest or {}).get("success_train_acc")
    return DEFAULT_SUCCESS_TRAIN_ACC if v is None else float(v)


def successful(df: pd.DataFrame, success_train_acc: float) -> pd.Series:
    """Boolean mask of successful runs (see module docstring); shape (len(df),). ``df``: one
    row per attempt (the callers pass each trial's latest), with status, kind and
    best_train_acc (or train_acc)."""
    if df.empty:
        return pd.Series([], dtype=bool)
    finite = df["kind"].eq("train")
    best_train = df["best_train_acc"] if "best_train_acc" in df else df["train_acc"]
    train_ok = pd.to_numeric(best_train.fillna(df["train_acc"]), errors="coerce"
                             ).fillna(-1.0) >= success_train_acc
    kernel_ok = ~finite & df["status"].eq(Status.COMPLETED)
    return kernel_ok | (finite & df["status"].isin(RAN_STATUSES) & train_ok)


def failed_successes(df: pd.DataFrame, success_train_acc: float) -> pd.Series:
    """Boolean mask of the successful runs that did not complete (diverged or failed after
    reaching the threshold); shape (len(df),). Tables show their count beside the cell."""
    if df.empty:
        return pd.Series([], dtype=bool)
    return successful(df, success_train_acc) & ~df["status"].eq(Status.COMPLETED)
