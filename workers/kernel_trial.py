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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from workers.errors import ConfigError
from workers.metrics import accuracy, mse
from workers.vocab import FULL_COV_ARCHS

KERNEL_INFERENCES = ("ntk", "nngp")


def kernel_metrics(k_train: Mapping[str, np.ndarray], k_test: Mapping[str, np.ndarray],
                   y_train: np.ndarray, y_test: np.ndarray, labels_train: np.ndarray,
                   labels_test: np.ndarray, *, diag_reg: float | None = None,
                   k_val: Mapping[str, np.ndarray] | None = None,
                   y_val: np.ndarray | None = None,
                   labels_val: np.ndarray | None = None,
                   test_predictions: dict[str, np.ndarray] | None = None,
                   ) -> dict[str, dict[str, float]]:
    """Metrics of kernel regression for each kernel in {"nngp", "ntk"}.

    k_train[kind] (N, N) train-train, k_test[kind] (M, N) test-train, y_* (., K) targets,
    labels_* (.,) ints; k_val[kind] (V, N) optional. Returns {kind: {test_acc, test_mse,
    train_acc, val_acc, finite}}. When test_predictions is a dict, the (M, K) float64 test
    predictions of each kind are put in it. Memory: the matrices given plus one float64 N x N
    working copy at a time (`workers.regression.kernel_fit`).
    """
    from workers.regression import kernel_apply, kernel_fit

    kw = {} if diag_reg is None else {"diag_reg": diag_reg}
    out: dict[str, dict[str, float]] = {}
    for kind in ("nngp", "ntk"):
        if kind not in k_train:
            continue
        # one factorisation per kind (one float64 copy of the train matrix, factored in
        # place), applied to the train, test and val rows block by block: no stacked copy
        alpha = kernel_fit(k_train[kind], y_train, **kw)
        p_tr = kernel_apply(k_train[kind], alpha)
        p_te = kernel_apply(k_test[kind], alpha)
        p_va = (kernel_apply(k_val[kind], alpha) if k_val is not None and kind in k_val
                and k_val[kind].shape[0] else np.zeros((0,) + alpha.shape[1:]))
        finite = all(np.all(np.isfinite(p)) for p in (p_tr, p_te, p_va))
        m = {"test_acc": accuracy(p_te, labels_test), "test_mse": mse(p_te, y_test),
             "train_acc": accuracy(p_tr, labels_train),
             "val_acc": accuracy(p_va, labels_val) if len(p_va) and labels_val is not None
             else math.nan,
             "finite": float(finite)}
        if len(p_va) and y_val is not None:
            m["val_mse"] = mse(p_va, y_val)
        if test_predictions is not None:
            test_predictions[kind] = p_te
        out[kind] = m
    return out


def run_kernel_trial(config: Mapping[str, Any],
                     report: Callable[[dict, str | None], None] | None = None, *,
                     map_tiles: Callable[[Callable[..., Any], list[dict]], list] | None = None,
                     ) -> dict[str, Any]:
    """One NTK/NNGP cell. config: arch, inference ('ntk' | 'nngp'), depth, w_var, b_var,
    optional diag_reg, tile_memory_bytes, tile_side, kernel_dtype ('float32' | 'float64'), plus the
    `workers.data.build_dataset` keys. Returns the metrics of the module docstring."""
    from workers.data import build_dataset
    from workers.kernels import kernel_matrices

    t0 = time.time()
    inference = config.get("inference", "ntk")
    if inference not in KERNEL_INFERENCES:
        raise ConfigError(f"inference {inference!r} is not a kernel method; use ntk or nngp")
    arch = config["arch"]
    ds = build_dataset(dict(config))
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
                        labels_val=ds.labels_val,
                        test_predictions=preds if config.get("store_predictions") else None)
    main = ms[inference]
    other = "nngp" if inference == "ntk" else "ntk"
    result: dict[str, Any] = {
        "status": "completed" if main["finite"] == 1.0 else "diverged",
        "error": None if main["finite"] == 1.0 else "non-finite kernel predictions",
        "best_test_acc": main["test_acc"], "test_acc": main["test_acc"],
        "test_mse": main["test_mse"], "train_acc": main["train_acc"],
        "val_acc": main["val_acc"], "steps": 0, "eta0": None,
        "train_size": int(len(ds.x_train)), "test_size": int(len(ds.x_test)),
        "kernel_s": t_kernel,
    }
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
