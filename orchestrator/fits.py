"""Analysis numerics for the figures: power-law fits, ensemble means and S-Dist.

Power laws (Fig. 4, Fig. S6). A learning curve ``y(m) ~ c m^slope`` (y = test error or test
MSE, m = training-set size) is a straight line on log-log axes; `fit_power_law` fits
``log y = log c + slope log m`` by ordinary least squares and reports the fit quality: R^2 of
the log-log fit, the standard error of the slope (``sqrt(SSE / (n - 2) / Sxx)``, NaN for two
points) and the points used. `segment_fits` fits the first and the last ``k`` points of a curve
separately (the paper's "slopes fitted on the first / last segments"); ``k`` is configurable.

S-Dist (Appendix E, Fig. S1). For two learning algorithms A1, A2 whose predictions depend on a
random initialisation theta,

    S-Dist(A1, A2) = E_x | E_theta A1(x) - E_theta A2(x) |^2,

the squared Euclidean norm over the K logits, averaged over the test inputs x. The expectation
over initialisations is an ensemble mean taken *before* the distance (for a deterministic
learner such as kernel regression, its ensemble has one member). `s_dist` takes ensemble
predictions of shape (S, N, K) (or a single (N, K) prediction) for each learner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from workers.errors import DataError
from workers.metrics import accuracy, mse


@dataclass(frozen=True)
class PowerLawFit:
    """y ~ exp(intercept) * x^slope fitted on log-log axes over ``n`` points in
    [x_min, x_max]; r2 = R^2 of the log-log fit; stderr = standard error of the slope."""

    slope: float
    intercept: float
    r2: float
    stderr: float
    n: int
    x_min: float
    x_max: float

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """The fitted curve exp(intercept) * x^slope at x (any shape)."""
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
                  ) -> PowerLawFit:
    """Least-squares fit of log y = intercept + slope * log x.

    x, y: (n,) positive numbers, n >= 2 distinct x. Non-finite or non-positive pairs are a
    `DataError` (a power law has no logarithm there), as are fewer than two distinct x.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise DataError(f"power-law fit: x has {xa.size} values, y has {ya.size}")
    bad = ~(np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0))
    if bad.any():
        raise DataError(f"power-law fit needs positive finite x and y; got x={xa[bad][:3]}, "
                        f"y={ya[bad][:3]} (drop those points or fit fewer)")
    if len(np.unique(xa)) < 2:
        raise DataError(f"power-law fit needs at least two distinct x, got {xa.tolist()}")
    lx, ly = np.log(xa), np.log(ya)
    n = lx.size
    mx, my = lx.mean(), ly.mean()
    sxx = float(((lx - mx) ** 2).sum())
    sxy = float(((lx - mx) * (ly - my)).sum())
    slope = sxy / sxx
    intercept = my - slope * mx
    resid = ly - (intercept + slope * lx)
    sse = float((resid ** 2).sum())
    syy = float(((ly - my) ** 2).sum())
    r2 = 1.0 - sse / syy if syy > 0 else 1.0
    stderr = math.sqrt(sse / (n - 2) / sxx) if n > 2 else math.nan
    return PowerLawFit(float(slope), float(intercept), float(r2), float(stderr), int(n),
                       float(xa.min()), float(xa.max()))


def segment_fits(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                 first: int = 3, last: int = 3) -> dict[str, PowerLawFit | None]:
    """Power-law fits over the first ``first`` and the last ``last`` points of a curve (sorted
    by x), plus ``all`` points. A segment with fewer than two usable points is None; points
    with y <= 0 (e.g. zero test error) are dropped first."""
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    order = np.argsort(xa, kind="stable")
    xa, ya = xa[order], ya[order]
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    xa, ya = xa[ok], ya[ok]
    out: dict[str, PowerLawFit | None] = {}
    for name, sl in (("first", slice(0, max(first, 0))),
                     ("last", slice(max(len(xa) - max(last, 0), 0), len(xa))),
                     ("all", slice(0, len(xa)))):
        xs, ys = xa[sl], ya[sl]
        out[name] = fit_power_law(xs, ys) if len(np.unique(xs)) >= 2 else None
    return out


def ensemble_mean(preds: np.ndarray) -> np.ndarray:
    """Mean over initialisations: (S, N, K) -> (N, K); an (N, K) prediction is returned as is
    (a deterministic learner)."""
    p = np.asarray(preds, dtype=np.float64)
    if p.ndim == 3:
        if p.shape[0] == 0:
            raise DataError("ensemble with no members: store test predictions for at least "
                            "one initialisation")
        return p.mean(axis=0)
    if p.ndim == 2:
        return p
    raise DataError(f"predictions must be (S, N, K) or (N, K), got shape {p.shape}")


def s_dist(a1: np.ndarray, a2: np.ndarray) -> float:
    """S-Dist(A1, A2) = E_x |E_theta A1(x) - E_theta A2(x)|^2 (module docstring).

    a1, a2: ensemble predictions (S1, N, K) / (S2, N, K), or (N, K) for one prediction, on
    the same N test inputs. The ensemble means are taken first, then the squared norm over
    the K logits, then the mean over the N inputs.
    """
    m1, m2 = ensemble_mean(a1), ensemble_mean(a2)
    if m1.shape != m2.shape:
        raise DataError(f"S-Dist needs predictions on the same test inputs: {m1.shape} vs "
                        f"{m2.shape}")
    return float(np.mean(np.sum((m1 - m2) ** 2, axis=-1)))


def ensemble_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the ensemble-mean prediction: preds (S, N, K) or (N, K), labels (N,)."""
    m = ensemble_mean(preds)
    lab = np.asarray(labels).ravel()
    if m.shape[0] != lab.size:
        raise DataError(f"{m.shape[0]} predictions but {lab.size} labels")
    return accuracy(m, lab)


def ensemble_mse(preds: np.ndarray, y: np.ndarray) -> float:
    """Mean over inputs and logits of (ensemble mean - y)^2: preds (S, N, K) or (N, K), y (N, K)."""
    return mse(ensemble_mean(preds), y)


__all__ = ["PowerLawFit", "ensemble_accuracy", "ensemble_mean", "ensemble_mse",
           "fit_power_law", "s_dist", "segment_fits"]
