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

Choosing the regulariser on held-out data (Lee et al. 2020, "Finite versus infinite neural
networks", Sec. 3): `kernel_fit_grid` solves for every value of a grid of ``diag_reg`` from one
float64 eigendecomposition ``K = V diag(lam) V^T``, since ``(K + r I)^-1 Y = V diag(1 /
(lam + r)) V^T Y`` for every r; `select_diag_reg` scores each on a validation split and picks
the best. The test split never enters the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def kernel_fit_grid(k_train_train: np.ndarray, y_train: np.ndarray,
                    diag_regs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Dual coefficients for every regulariser of a grid, from one eigendecomposition.

    ``alphas[g] = (K_XX + diag_regs[g] * mean(diag K_XX) I)^-1 Y`` (K_XX symmetrised as
    (K + K^T) / 2, as `kernel_fit`), computed as ``V diag(1 / (lam + reg_g)) V^T Y`` from the
    float64 eigendecomposition ``K_XX = V diag(lam) V^T`` (LAPACK ``syevr``): one O(N^3)
    factorisation for the whole grid, then O(N^2 K) per grid value.

    k_train_train (N, N) any float dtype, left untouched; y_train (N, K) or (N,); diag_regs
    (G,) values >= 0, relative to the mean diagonal. Returns (alphas (G, N, K) float64 (or
    (G, N) for 1-D y), valid (G,) bool). ``valid[g]`` is False where the regularised kernel is
    not numerically positive definite (smallest eigenvalue plus regulariser at most N x machine
    epsilon x the largest eigenvalue, where a Cholesky factorisation would fail too); such an
    alpha is all NaN. Memory: two float64 N x N arrays (the working copy, overwritten, and the
    eigenvectors) plus G x N x K. Errors as `kernel_fit` (ConfigError for a negative or
    non-finite grid value or an empty grid; DataError for non-finite kernel entries).
    """
    kxx = np.asarray(k_train_train)
    y = np.asarray(y_train, np.float64)
    regs = np.asarray(list(diag_regs), np.float64).reshape(-1)
    if regs.size == 0:
        raise ConfigError("diag_reg grid is empty; give at least one value, e.g. (1e-6, 1e-3)")
    if not np.all(np.isfinite(regs)):
        raise ConfigError(f"diag_reg grid values must be finite, got {list(regs)}")
    n = _check_inputs(kxx, y, float(regs.min()))
    if n == 0:
        return np.zeros((regs.size,) + y.shape), np.ones(regs.size, bool)
    a, _ = _regularised_copy(kxx, 0.0)
    scale = float(np.mean(np.diag(kxx).astype(np.float64)))
    lam, vecs = scipy.linalg.eigh(a, lower=True, overwrite_a=True, check_finite=False)
    del a
    vty = vecs.T @ y.reshape(n, -1)  # (N, K) coordinates of Y in the eigenbasis
    tol = n * np.finfo(np.float64).eps * max(float(np.max(np.abs(lam))), np.finfo(float).tiny)
    out = np.full((regs.size, n, vty.shape[1]), np.nan)
    valid = np.zeros(regs.size, bool)
    for g, r in enumerate(regs):
        shifted = lam + r * scale
        if float(shifted.min()) <= tol:
            continue
        out[g] = vecs @ (vty / shifted[:, None])
        valid[g] = True
    return out.reshape((regs.size,) + y.shape), valid


@dataclass(frozen=True)
class DiagRegChoice:
    """The regulariser chosen on a validation split (`select_diag_reg`).

    diag_regs: the grid (relative to the mean train-kernel diagonal); val_acc, val_mse: per
    grid value (NaN where the regularised kernel is not positive definite); index: the chosen
    grid position; alpha: its dual coefficients (N, K) float64."""

    diag_regs: tuple[float, ...]
    val_acc: tuple[float, ...]
    val_mse: tuple[float, ...]
    index: int
    alpha: np.ndarray

    @property
    def diag_reg(self) -> float:
        """The chosen regulariser, relative to the mean train-kernel diagonal."""
        return self.diag_regs[self.index]


def select_diag_reg(k_train_train: np.ndarray, k_val_train: np.ndarray, y_train: np.ndarray,
                    y_val: np.ndarray, labels_val: np.ndarray,
                    diag_regs: Sequence[float]) -> DiagRegChoice:
    """Choose ``diag_reg`` from a grid on a validation split: the value of highest validation
    accuracy, ties broken by the lower validation MSE, then by the larger regulariser (the
    better-conditioned solve).

    k_train_train (N, N); k_val_train (V, N) validation-train kernel; y_train (N, K), y_val
    (V, K) targets; labels_val (V,) ints; diag_regs (G,) >= 0. One eigendecomposition serves
    the whole grid (`kernel_fit_grid`); the validation predictions of all G values come from
    one blocked pass over k_val_train. Raises ConfigError for an empty validation split or
    grid, DataError when no grid value leaves the kernel positive definite (name a larger one)
    or for non-finite entries.
    """
    kvx = np.asarray(k_val_train)
    regs = tuple(float(r) for r in diag_regs)
    if kvx.ndim != 2 or kvx.shape[0] == 0:
        raise ConfigError("choosing diag_reg needs a validation split: set val_size > 0 "
                          f"(validation-train kernel has shape {kvx.shape})")
    alphas, valid = kernel_fit_grid(k_train_train, y_train, regs)
    if not valid.any():
        raise DataError(f"no diag_reg of the grid {list(regs)} makes the training kernel "
                        "positive definite; add larger values (e.g. 1e-3) to the grid")
    g, n = alphas.shape[0], alphas.shape[1]
    stacked = np.moveaxis(alphas.reshape(g, n, -1), 0, 1).reshape(n, -1)  # (N, G K), a copy
    np.nan_to_num(stacked, copy=False)  # invalid columns (all NaN): scored NaN below
    pv = kernel_apply(kvx, stacked).reshape(kvx.shape[0], g, -1)
    del stacked
    yv = np.asarray(y_val, np.float64).reshape(kvx.shape[0], -1)
    acc = [accuracy(pv[:, i], labels_val) if valid[i] else float("nan") for i in range(g)]
    err = [mse(pv[:, i], yv) if valid[i] else float("nan") for i in range(g)]
    best = min((i for i in range(g) if valid[i]), key=lambda i: (-acc[i], err[i], -regs[i]))
    return DiagRegChoice(regs, tuple(acc), tuple(err), best, alphas[best].copy())


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
