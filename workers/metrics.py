"""The two scores every figure reports, computed in one place: classification accuracy and
the mean squared error of predictions against the regression targets.

Conventions (docs/protocol.md, "D" and "I"): predictions are (N, K) logits or kernel-regression
outputs, K = 10; targets y are one-hot minus 0.1 (N, K); labels are integers (N,). An empty set
scores NaN (nothing was measured), never 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.errors import ConfigError


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of rows of ``pred`` (N, K) whose argmax equals ``labels`` (N,); NaN for N = 0.

    Raises ConfigError when the row counts differ."""
    pred = np.asarray(pred)
    labels = np.asarray(labels).ravel()
    if pred.shape[0] != labels.shape[0]:
        raise ConfigError(f"pred has {pred.shape[0]} rows, labels {labels.shape[0]}")
    if pred.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(pred, axis=-1) == labels))


def mse(pred: Any, y: Any, *, dtype: Any = np.float64) -> float:
    """Mean over the N x K entries of (pred - y)^2, computed in ``dtype`` (default float64; the
    trainer passes its logits' dtype); NaN for N = 0. Raises ConfigError on a shape mismatch."""
    pred = np.asarray(pred, dtype)
    y = np.asarray(y, dtype)
    if pred.shape != y.shape:
        raise ConfigError(f"pred shape {pred.shape} differs from target shape {y.shape}")
    if pred.size == 0:
        return float("nan")
    return float(np.mean(np.square(pred - y)))
