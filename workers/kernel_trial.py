"""Kernel-regression trial worker: dataset -> NNGP/NTK matrices -> predictions -> metrics.

``run_kernel_trial(config, report=None, *, map_tiles=None)`` is the entry point the
orchestrator runs for ``inference`` in {ntk, nngp}. The kernel matrices are computed in tiles
by `workers.kernels.kernel_matrices`; ``map_tiles(fn, list_of_kwargs) -> list`` lets the caller
run the tiles elsewhere and cache them (the orchestrator passes a Ray-task mapper with a
content-addressed tile cache). No Ray or MLflow here: in a plain process it runs the tiles in a
loop.

Memory: only the cell's own arch is assembled (NNGP + NTK of train x train, test x train and
val x train, streamed tile by tile into preallocated arrays); the regression adds one float64
copy of the train matrix at a time. `workers.memory.kernel_trial_bytes` estimates the peak.

Metrics (both kernels come from the same tiles; the trial's own ``inference`` fills the
standard names, the other is reported under an ``nngp_`` / ``ntk_`` prefix):
  test_acc   fraction of test images whose argmax prediction is the label
  test_mse   mean over test images and the K logits of (f(x) - y)^2, y = one-hot - 0.1
  best_test_acc = test_acc (no training trajectory), train_acc, val_acc (NaN without a
  validation split), steps = 0, status 'completed' (or 'diverged' when predictions are not
  finite), wall_s.

Regulariser (opt-in per preset): by default the fixed ``diag_reg`` (config; default
`workers.regression.DEFAULT_DIAG_REG`, 1e-6 x the mean train-kernel diagonal). With config
``diag_reg_grid`` (e.g. ``(1e-8, 1e-6, ..., 1e-1)``, also relative to the mean diagonal) and a
validation split, each kernel's regulariser is chosen on the validation split (highest
validation accuracy; Lee et al. 2020) from one eigendecomposition of the train kernel, the
metrics above are at the chosen value, and the result adds `SELECTION_KEYS`: the chosen value,
the metrics at the fixed ``diag_reg`` (``fixed_reg_test_acc`` ...: the paper's t = infinity
number, computed as without a grid) and the validation curve over the grid
(``diag_reg_curve_json``). Without ``diag_reg_grid`` nothing changes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from workers.errors import ConfigError
from workers.metrics import accuracy, mse
from workers.vocab import FULL_COV_ARCHS, KERNEL_INFERENCES, Status

# what a trial with ``diag_reg_grid`` adds to its result (`kernel_metrics`); the other kernel's
# come under its ``nngp_`` / ``ntk_`` prefix like its other metrics
SELECTION_KEYS = ("chosen_diag_reg", "fixed_reg_test_acc", "fixed_reg_test_mse",
                  "fixed_reg_val_acc", "fixed_reg_train_acc", "diag_reg_curve_json")


def _split_metrics(alpha: np.ndarray, k_train: np.ndarray, k_test: np.ndarray,
                   k_val: np.ndarray | None, y_test: np.ndarray, labels_train: np.ndarray,
                   labels_test: np.ndarray, y_val: np.ndarray | None,
                   labels_val: np.ndarray | None) -> tuple[dict[str, float], np.ndarray]:
    """Train / test / val metrics of dual coefficients alpha, and the test predictions."""
    from workers.regression import kernel_apply

    p_tr = kernel_apply(k_train, alpha)
    p_te = kernel_apply(k_test, alpha)
    p_va = (kernel_apply(k_val, alpha) if k_val is not None and k_val.shape[0]
            else np.zeros((0,) + alpha.shape[1:]))
    finite = all(np.all(np.isfinite(p)) for p in (p_tr, p_te, p_va))
    m = {"test_acc": accuracy(p_te, labels_test), "test_mse": mse(p_te, y_test),
         "train_acc": accuracy(p_tr, labels_train),
         "val_acc": accuracy(p_va, labels_val) if len(p_va) and labels_val is not None
         else math.nan,
         "finite": float(finite)}
    if len(p_va) and y_val is not None:
        m["val_mse"] = mse(p_va, y_val)
    return m, p_te


def check_diag_reg_grid(grid: Any) -> tuple[float, ...]:
    """A ``diag_reg_grid`` config value as a tuple of floats: a non-empty list of distinct
    finite numbers >= 0 (relative to the mean train-kernel diagonal), in increasing order.
    Raises ConfigError naming the problem."""
    if isinstance(grid, str | bytes) or not isinstance(grid, list | tuple):
        raise ConfigError(f"diag_reg_grid must be a list of numbers >= 0, e.g. (1e-6, 1e-4, "
                          f"1e-2), got {grid!r}")
    vals = []
    for v in grid:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v < 0:
            raise ConfigError(f"diag_reg_grid: every value must be a finite number >= 0, got "
                              f"{v!r} in {list(grid)}")
        vals.append(float(v))
    if not vals:
        raise ConfigError("diag_reg_grid is empty; give at least one value, e.g. (1e-6, 1e-3)")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"diag_reg_grid has duplicate values: {list(grid)}")
    return tuple(sorted(vals))


def kernel_metrics(k_train: Mapping[str, np.ndarray], k_test: Mapping[str, np.ndarray],
                   y_train: np.ndarray, y_test: np.ndarray, labels_train: np.ndarray,
                   labels_test: np.ndarray, *, diag_reg: float | None = None,
                   k_val: Mapping[str, np.ndarray] | None = None,
                   y_val: np.ndarray | None = None,
                   labels_val: np.ndarray | None = None,
                   test_predictions: dict[str, np.ndarray] | None = None,
                   diag_reg_grid: Sequence[float] | None = None,
                   ) -> dict[str, dict[str, float]]:
    """Metrics of kernel regression for each kernel in {"nngp", "ntk"}.

    k_train[kind] (N, N) train-train, k_test[kind] (M, N) test-train, y_* (., K) targets,
    labels_* (.,) ints; k_val[kind] (V, N) optional. Returns {kind: {test_acc, test_mse,
    train_acc, val_acc, finite}} at the fixed ``diag_reg`` (default
    `workers.regression.DEFAULT_DIAG_REG`). When test_predictions is a dict, the (M, K)
    float64 test predictions of each kind are put in it. Memory: the matrices given plus one
    float64 N x N working copy at a time (`workers.regression.kernel_fit`).

    With ``diag_reg_grid`` (values relative to the mean diagonal; needs k_val, y_val and
    labels_val with V > 0), each kind's regulariser is chosen on the validation split
    (`workers.regression.select_diag_reg`; the test split is never used for the choice) and
    the metrics above are those at the chosen value, plus: ``chosen_diag_reg``;
    ``fixed_reg_test_acc``, ``fixed_reg_test_mse``, ``fixed_reg_val_acc``,
    ``fixed_reg_train_acc``: the same metrics at the fixed ``diag_reg`` (computed exactly as
    without a grid, so the t = infinity number of a fixed regulariser stays reproducible);
    ``diag_reg_curve_json``: JSON ``{"diag_reg": [...], "val_acc": [...], "val_mse": [...]}``
    over the grid (null where the regularised kernel is not positive definite). Memory then:
    two float64 N x N arrays during the eigendecomposition (`kernel_fit_grid`).
    """
    from workers.regression import kernel_fit, select_diag_reg

    kw = {} if diag_reg is None else {"diag_reg": diag_reg}
    grid = None if diag_reg_grid is None else check_diag_reg_grid(diag_reg_grid)
    out: dict[str, dict[str, float]] = {}
    for kind in KERNEL_INFERENCES:
        if kind not in k_train:
            continue
        kv = k_val[kind] if k_val is not None and kind in k_val else None
        # one factorisation per kind (one float64 copy of the train matrix, factored in
        # place), applied to the train, test and val rows block by block: no stacked copy
        alpha = kernel_fit(k_train[kind], y_train, **kw)
        m, p_te = _split_metrics(alpha, k_train[kind], k_test[kind], kv, y_test, labels_train,
                                 labels_test, y_val, labels_val)
        del alpha
        if grid is not None:
            if kv is None or y_val is None or labels_val is None:
                raise ConfigError("diag_reg_grid chooses diag_reg on the validation split: "
                                  "set val_size > 0 for the kernel trials")
            choice = select_diag_reg(k_train[kind], kv, y_train, y_val, labels_val, grid)
            fixed = m
            m, p_te = _split_metrics(choice.alpha, k_train[kind], k_test[kind], kv, y_test,
                                     labels_train, labels_test, y_val, labels_val)
            m["chosen_diag_reg"] = choice.diag_reg
            for k in ("test_acc", "test_mse", "val_acc", "train_acc"):
                m[f"fixed_reg_{k}"] = fixed[k]
            m["diag_reg_curve_json"] = json.dumps(
                {"diag_reg": list(choice.diag_regs),
                 "val_acc": [None if math.isnan(v) else v for v in choice.val_acc],
                 "val_mse": [None if math.isnan(v) else v for v in choice.val_mse]})
        if test_predictions is not None:
            test_predictions[kind] = p_te
        out[kind] = m
    return out


def run_kernel_trial(config: Mapping[str, Any],
                     report: Callable[[dict, str | None], None] | None = None, *,
                     map_tiles: Callable[[Callable[..., Any], list[dict]], list] | None = None,
                     ) -> dict[str, Any]:
    """One NTK/NNGP cell. config: arch, inference ('ntk' | 'nngp'), depth, w_var, b_var,
    optional diag_reg, diag_reg_grid, tile_memory_bytes, tile_side, kernel_dtype ('float32' |
    'float64'), plus the `workers.data.build_dataset` keys. Returns the metrics of the module
    docstring. Raises ConfigError for a diag_reg_grid without a validation split."""
    from workers.data import build_dataset
    from workers.kernels import kernel_matrices

    t0 = time.time()
    inference = config.get("inference", "ntk")
    if inference not in KERNEL_INFERENCES:
        raise ConfigError(f"inference {inference!r} is not a kernel method; use ntk or nngp")
    arch = config["arch"]
    grid = config.get("diag_reg_grid")
    if grid is not None:
        grid = check_diag_reg_grid(grid)
    ds = build_dataset(dict(config))
    if grid is not None and not len(ds.x_val):
        raise ConfigError("diag_reg_grid chooses diag_reg on the validation split, but this "
                          "kernel trial has none: set val_size > 0 for the kernel trials")
    kw: dict[str, Any] = dict(depth=int(config.get("depth", 8)),
                              w_var=float(config.get("w_var", 2.0)),
                              b_var=float(config.get("b_var", 0.01)), map_tiles=map_tiles)
    if config.get("tile_memory_bytes"):
        kw["memory_bytes"] = int(config["tile_memory_bytes"])
    if config.get("tile_side"):  # fixed tiles: nested subsets reuse cached tiles
        kw["max_side"] = int(config["tile_side"])
    if config.get("kernel_dtype"):
        kw["dtype"] = np.dtype(config["kernel_dtype"]).type
    # gap/lap4/lap8 share one full-covariance propagation: computing the three readouts
    # together costs about one, and the tiles (cached by content) then serve all three cells.
    # Only this cell's arch is assembled into (N, N) matrices; the sibling readouts of the
    # tiles go to the tile cache (through map_tiles) for their own cells.
    archs = list(FULL_COV_ARCHS) if arch in FULL_COV_ARCHS else [arch]
    kw["assemble"] = [arch]
    k_tr = kernel_matrices(archs, ds.x_train, None, **kw)[arch]
    k_te = kernel_matrices(archs, ds.x_test, ds.x_train, **kw)[arch]
    k_va = kernel_matrices(archs, ds.x_val, ds.x_train, **kw)[arch] if len(ds.x_val) else None
    t_kernel = time.time() - t0
    preds: dict[str, np.ndarray] = {}
    ms = kernel_metrics(k_tr, k_te, ds.y_train, ds.y_test, ds.labels_train, ds.labels_test,
                        diag_reg=config.get("diag_reg"), k_val=k_va, y_val=ds.y_val,
                        labels_val=ds.labels_val, diag_reg_grid=grid,
                        test_predictions=preds if config.get("store_predictions") else None)
    main = ms[inference]
    other = "nngp" if inference == "ntk" else "ntk"
    result: dict[str, Any] = {
        "status": Status.COMPLETED if main["finite"] == 1.0 else Status.DIVERGED,
        "error": None if main["finite"] == 1.0 else "non-finite kernel predictions",
        "best_test_acc": main["test_acc"], "test_acc": main["test_acc"],
        "test_mse": main["test_mse"], "train_acc": main["train_acc"],
        "val_acc": main["val_acc"], "steps": 0, "eta0": None,
        "train_size": int(len(ds.x_train)), "test_size": int(len(ds.x_test)),
        "kernel_s": t_kernel,
    }
    if grid is not None:  # only with the opt-in: rows without it are as before
        for k in SELECTION_KEYS:
            result[k] = main[k]
    for k, v in ms[other].items():
        if k != "finite":
            result[f"{other}_{k}"] = v
    if config.get("store_predictions"):  # Fig. S1 combines the test predictions of trials
        result["predictions"] = preds[inference]
    result["wall_s"] = time.time() - t0
    if report is not None:
        report({"step": 0, "test_acc": result["test_acc"], "test_mse": result["test_mse"],
                "train_acc": result["train_acc"]}, None)
    return result
