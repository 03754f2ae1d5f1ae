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
from workers.metrics import accuracy, mse

DEFAULT_DIAG_REG = 1e-6


# Rows per block of the blocked passes below (finiteness checks, symmetrisation, products):
# temporaries stay at _BLOCK x N, independent of the number of rows.
_BLOCK = 1024


def _check_finite(name: str, a: np.ndarray) -> None:
    """Raise DataError if a has a NaN / inf entry; checked in row blocks (no N x M mask)."""
    flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
    for r0 in range(0, flat.shape[0], _BLOCK):
        if not np.all(np.isfinite(flat[r0:r0 + _BLOCK])):
            raise DataError(f"{name} has NaN or infinite entries; recompute the kernel (float64 "
                            "via dtype=np.float64 if it overflowed) before regression")


def _regularised_copy(kxx: np.ndarray, diag_reg: float) -> tuple[np.ndarray, float]:
    """The one float64 working copy: lower triangle of (K + K^T) / 2 + reg I, Fortran order.

    Fortran order lets LAPACK factor it in place (``overwrite_a``); only the lower triangle
    is symmetrised and read, in blocks, so no N x N temporary besides the copy itself.
    Returns (copy, reg) with reg = diag_reg * mean(diag K)."""
    n = kxx.shape[0]
    a = np.empty((n, n), np.float64, order="F")
    a[...] = kxx
    for r0 in range(0, n, _BLOCK):
        r1 = min(r0 + _BLOCK, n)
        # rows r0:r1, columns 0:r1 of the lower triangle: average with the transposed block
        blk = a[r0:r1, :r1]
        blk += kxx[:r1, r0:r1].T
        blk *= 0.5
    scale = float(np.mean(np.diag(kxx).astype(np.float64)))
    a[np.diag_indices(n)] = np.diag(kxx).astype(np.float64) + diag_reg * scale
    return a, diag_reg * scale


def _factor(kxx: np.ndarray, diag_reg: float) -> tuple[tuple[np.ndarray, bool], float]:
    """Cholesky factor (in the single float64 copy) of the regularised training kernel."""
    a, reg = _regularised_copy(kxx, diag_reg)
    try:
        c = scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        c = None
    if c is None or not np.all(np.isfinite(np.diag(c[0]))) or np.any(np.diag(c[0]) <= 0):
        raise DataError(
            f"the training kernel plus diag_reg={diag_reg:g} x mean diagonal is not positive "
            "definite (singular or rounding-damaged kernel); use a larger diag_reg, e.g. "
            f"diag_reg={max(diag_reg * 100, 1e-6):g}, or compute the kernel in float64"
        )
    return c, reg


def _check_inputs(kxx: np.ndarray, y: np.ndarray, diag_reg: float) -> int:
    if kxx.ndim != 2 or kxx.shape[0] != kxx.shape[1]:
        raise ConfigError(f"k_train_train must be square (N, N), got shape {kxx.shape}")
    n = kxx.shape[0]
    if y.shape[0] != n:
        raise ConfigError(f"y_train has {y.shape[0]} rows but the kernel has {n} training points")
    if diag_reg < 0:
        raise ConfigError(f"diag_reg must be >= 0, got {diag_reg}")
    _check_finite("k_train_train", kxx)
    _check_finite("y_train", y)
    return n


def kernel_fit(k_train_train: np.ndarray, y_train: np.ndarray, *,
               diag_reg: float = DEFAULT_DIAG_REG) -> np.ndarray:
    """Dual coefficients ``alpha = (K_XX + diag_reg * mean(diag K_XX) I)^-1 Y``, float64.

    k_train_train (N, N) any float dtype, left untouched; y_train (N, K) or (N,). Memory: one
    float64 N x N working copy (factored in place) plus O(1024 x N) temporaries. Errors as
    `kernel_predict`.
    """
    kxx = np.asarray(k_train_train)
    y = np.asarray(y_train, np.float64)
    n = _check_inputs(kxx, y, diag_reg)
    if n == 0:
        return np.zeros(y.shape)
    c, _ = _factor(kxx, diag_reg)
    alpha = scipy.linalg.cho_solve(c, y, check_finite=False)
    del c  # the working copy goes before the caller multiplies
    return alpha


def kernel_apply(k_rows_train: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Predictions ``K_*X alpha`` in float64: k_rows_train (M, N) any float dtype, alpha (N, K)
    or (N,) from `kernel_fit`. Computed in row blocks: temporaries O(1024 x N), never a float64
    copy of the whole (M, N) matrix. Returns (M, K) ((M,) for 1-D alpha)."""
    ksx = np.asarray(k_rows_train)
    if ksx.ndim != 2 or ksx.shape[1] != alpha.shape[0]:
        raise ConfigError(f"k_test_train must be (M, {alpha.shape[0]}) to match k_train_train, "
                          f"got {ksx.shape}")
    _check_finite("k_test_train", ksx)
    out = np.empty((ksx.shape[0],) + alpha.shape[1:], np.float64)
    for r0 in range(0, ksx.shape[0], _BLOCK):
        out[r0:r0 + _BLOCK] = np.asarray(ksx[r0:r0 + _BLOCK], np.float64) @ alpha
    return out


def kernel_predict(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    *,
    diag_reg: float = DEFAULT_DIAG_REG,
) -> np.ndarray:
    """Kernel regression predictions ``K_*X (K_XX + diag_reg * mean(diag K_XX) I)^-1 Y``.

    k_train_train (N, N) symmetric positive semi-definite (symmetrised as (K + K^T) / 2);
    k_test_train (M, N); y_train (N, K) targets (or (N,)). Returns (M, K) float64 predictions
    ((M,) for 1-D y). The solve is a float64 Cholesky factorisation done in place in one
    float64 copy of the training kernel (`kernel_fit`), then `kernel_apply`.
    Raises DataError when the regularised kernel is not positive definite (use a larger
    diag_reg) or has non-finite entries, ConfigError for mismatched shapes or diag_reg < 0.
    """
    kxx = np.asarray(k_train_train)
    ksx = np.asarray(k_test_train)
    y = np.asarray(y_train, np.float64)
    n = _check_inputs(kxx, y, diag_reg)
    if ksx.ndim != 2 or ksx.shape[1] != n:
        raise ConfigError(f"k_test_train must be (M, {n}) to match k_train_train, got {ksx.shape}")
    _check_finite("k_test_train", ksx)
    if n == 0:
        return np.zeros((ksx.shape[0],) + y.shape[1:])
    return kernel_apply(ksx, kernel_fit(kxx, y, diag_reg=diag_reg))


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
