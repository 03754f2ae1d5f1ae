"""Kernel regression: NTK prediction at t = infinity and the NNGP posterior mean.

Both are ``f(X*) = K(X*, X) (K(X, X) + reg I)^-1 Y`` (the ``ntk`` and ``nngp`` inference
columns; neural-tangents' ``predict.gradient_descent_mse`` at t = inf and
``predict.gp_inference`` posterior mean). The solve is done in float64 via Cholesky, whatever
the kernels' dtype.

Regularisation: ``reg = diag_reg * mean(diag(K(X, X)))``, i.e. relative to the kernel's scale,
as neural-tangents' ``diag_reg_absolute_scale=False``. The default ``DEFAULT_DIAG_REG = 1e-6``
is the value the paper's CPU reference point used; it is small enough to interpolate the
training targets to about 1e-6 relative and large enough to absorb float32 rounding in kernels
of a few thousand points. A kernel that is not positive definite after regularisation (or has
non-finite entries) raises `DataError` naming the remedy.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from workers.errors import ConfigError, DataError

DEFAULT_DIAG_REG = 1e-6


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name} has NaN or infinite entries; recompute the kernel (float64 "
                        "via dtype=np.float64 if it overflowed) before regression")


def kernel_predict(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    *,
    diag_reg: float = DEFAULT_DIAG_REG,
) -> np.ndarray:
    """Kernel regression predictions ``K_*X (K_XX + diag_reg * mean(diag K_XX) I)^-1 Y``.

    k_train_train (N, N) symmetric positive semi-definite; k_test_train (M, N);
    y_train (N, K) targets (or (N,)). Returns (M, K) float64 predictions ((M,) for 1-D y).
    Raises DataError when the regularised kernel is not positive definite (use a larger
    diag_reg) or has non-finite entries, ConfigError for mismatched shapes or diag_reg < 0.
    """
    kxx = np.asarray(k_train_train, np.float64)
    ksx = np.asarray(k_test_train, np.float64)
    y = np.asarray(y_train, np.float64)
    if kxx.ndim != 2 or kxx.shape[0] != kxx.shape[1]:
        raise ConfigError(f"k_train_train must be square (N, N), got shape {kxx.shape}")
    n = kxx.shape[0]
    if ksx.ndim != 2 or ksx.shape[1] != n:
        raise ConfigError(f"k_test_train must be (M, {n}) to match k_train_train, got {ksx.shape}")
    if y.shape[0] != n:
        raise ConfigError(f"y_train has {y.shape[0]} rows but the kernel has {n} training points")
    if diag_reg < 0:
        raise ConfigError(f"diag_reg must be >= 0, got {diag_reg}")
    _check_finite("k_train_train", kxx)
    _check_finite("k_test_train", ksx)
    _check_finite("y_train", y)
    if n == 0:
        return np.zeros((ksx.shape[0],) + y.shape[1:])
    scale = float(np.mean(np.diag(kxx)))
    a = 0.5 * (kxx + kxx.T)
    a[np.diag_indices(n)] += diag_reg * scale
    try:
        c = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        c = None
    if c is None or not np.all(np.isfinite(c[0])) or np.any(np.diag(c[0]) <= 0):
        raise DataError(
            f"the training kernel plus diag_reg={diag_reg:g} x mean diagonal is not positive "
            "definite (singular or rounding-damaged kernel); use a larger diag_reg, e.g. "
            f"diag_reg={max(diag_reg * 100, 1e-6):g}, or compute the kernel in float64"
        )
    return ksx @ scipy.linalg.cho_solve(c, y, check_finite=False)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax of pred (M, K) equals the integer label (M,)."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    if pred.shape[0] != labels.shape[0]:
        raise ConfigError(f"pred has {pred.shape[0]} rows, labels {labels.shape[0]}")
    if pred.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(pred, axis=1) == labels))


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error per output: mean over rows and outputs of (pred - y)^2."""
    pred = np.asarray(pred, np.float64)
    y = np.asarray(y, np.float64)
    if pred.shape != y.shape:
        raise ConfigError(f"pred shape {pred.shape} differs from target shape {y.shape}")
    return float(np.mean((pred - y) ** 2))


def regression_metrics(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    labels_test: np.ndarray,
    *,
    diag_reg: float = DEFAULT_DIAG_REG,
) -> dict[str, float]:
    """{"test_acc", "test_mse"} of kernel regression (see `kernel_predict`)."""
    pred = kernel_predict(k_train_train, k_test_train, y_train, diag_reg=diag_reg)
    return {"test_acc": accuracy(pred, labels_test), "test_mse": mse(pred, y_test)}
