"""The one definition of a successful run, shared by the tables and figures
(`orchestrator.figures`) and the MLflow ``success`` tag (`orchestrator.tracking`).

A run succeeds when it completed and, for finite networks, its best training accuracy reached
the preset's ``success_train_acc`` (0.95 in the paper, Sec. 3: "we only report networks that
reach 95% training accuracy"); kernel cells succeed when they completed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workers.vocab import Status

DEFAULT_SUCCESS_TRAIN_ACC = 0.95  # the paper's; a manifest always records the preset's own


def success_threshold(manifest: Mapping[str, Any] | None) -> float:
    """The train-accuracy threshold of `successful` for a sweep: its manifest's
    ``success_train_acc`` (the preset's), the paper's 0.95 for a manifest that predates it.
    Tables, figures and the MLflow ``success`` tag all take it from here."""
    v = (manifest or {}).get("success_train_acc")
    return DEFAULT_SUCCESS_TRAIN_ACC if v is None else float(v)


def successful(df: pd.DataFrame, success_train_acc: float) -> pd.Series:
    """Boolean mask of successful runs (see module docstring); shape (len(df),)."""
    if df.empty:
        return pd.Series([], dtype=bool)
    ok = df["status"].eq(Status.COMPLETED)
    finite = df["kind"].eq("train")
    best_train = df["best_train_acc"] if "best_train_acc" in df else df["train_acc"]
    train_ok = best_train.fillna(df["train_acc"]).fillna(-1.0) >= success_train_acc
    return ok & (~finite | train_ok)
