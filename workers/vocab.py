"""The project's vocabulary: the names of the paper's axes, their defaults, and the scopes of
config keys. Every other module imports these; none restates them.

Names follow the paper and docs/protocol.md: architectures (section "M"), transforms ("D"),
inference algorithms ("I"). No imports beyond the standard library, so the data model
(`orchestrator.spec`), the workers and the sweep files can all depend on it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# ----------------------------------------------------------------------------- the axes
ARCHS: tuple[str, ...] = ("fcn", "lcn", "vec", "gap", "lap4", "lap8")
# Convolutional readouts that need the full (HW x HW) spatial covariance; one propagation
# serves all three (docs/performance.md).
FULL_COV_ARCHS: tuple[str, ...] = ("gap", "lap4", "lap8")
# Readouts that need only the per-pixel (diagonal) covariance.
DIAG_COV_ARCHS: tuple[str, ...] = ("vec", "lcn")

# The ImageNet experiments (paper Sec. 6.2, App. F.2): Flax's ImageNet-example ResNets and the
# small MLP-Mixer with 16x16 patches (workers/imagenet_models.py). They are trained with the
# example's recipe (workers/imagenet_train.py), never as kernels; docs/protocol.md, "ImageNet".
IMAGENET_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101",
                                   "resnet152", "resnet200", "mixer_s16")
ALL_ARCHS: tuple[str, ...] = ARCHS + IMAGENET_ARCHS
# Datasets a config may name: CIFAR-10 and its synthetic stand-in (workers/data.py), an
# ImageNet-layout image folder (workers/imagenet.py).
DATASETS: tuple[str, ...] = ("cifar10", "synthetic", "imagenet")

TRANSFORMS: tuple[str, ...] = (
    "identity", "shared_rotation", "pixel_rotation", "permutation", "global_rotation")

INFERENCES: tuple[str, ...] = ("ntk", "nngp", "nn", "nn_plus")
KERNEL_INFERENCES: tuple[str, ...] = ("ntk", "nngp")  # infinite width: kernel regression
FINITE_INFERENCES: tuple[str, ...] = ("nn", "nn_plus")  # finite width: SGD

PRESETS: tuple[str, ...] = ("smoke", "cpu", "paper")


class Status(StrEnum):
    """The outcome of one attempt of a trial: the ``status`` column of every row
    (orchestrator.store.TRIAL_SCHEMA; docs/results.md, "Statuses"). A str, so rows, Parquet
    and SQL hold the plain value."""

    COMPLETED = "completed"  # ran to its end (finite nets: max_steps, early stop or plateau)
    DIVERGED = "diverged"  # a non-finite loss or kernel prediction: a finished result
    FAILED = "failed"  # raised, crashed or was lost with its worker: a later attempt retries
    INTERRUPTED = "interrupted"  # a stop request: checkpointed, continued by the next attempt


STATUSES: tuple[Status, ...] = tuple(Status)
# A finished result: resume does not run these again, tables and figures read them.
DONE_STATUSES: tuple[Status, ...] = (Status.COMPLETED, Status.DIVERGED)
TRIAL_KINDS: tuple[str, ...] = ("train", "kernel")
FIRST_LAYER_INITS: tuple[str, ...] = ("gaussian", "uniform")


def trial_kind(inference: str) -> str:
    """'kernel' for ntk / nngp, 'train' for nn / nn_plus."""
    return "kernel" if inference in KERNEL_INFERENCES else "train"


# ----------------------------------------------------------------------------- defaults
# The paper's widths per architecture (Sec. 5; docs/protocol.md, "M").
PAPER_WIDTHS: dict[str, int] = dict(fcn=1024, lcn=32, vec=128, gap=128, lap4=128, lap8=128)

# NN and NN+ (docs/protocol.md, "I"): NN+ is "+LR+L2", 8x the base learning rate eta_0 and L2
# coefficient lambda = 1e-7.
INFERENCE_DEFAULTS: dict[str, dict[str, float]] = {
    "nn": {"lr_factor": 1.0, "l2": 0.0},
    "nn_plus": {"lr_factor": 8.0, "l2": 1e-7},
}

# ----------------------------------------------------------------------------- config keys
# Every config key a sweep may set, with its type. Float keys accept ints (normalised to
# float, so ``w_var=2`` and ``w_var=2.0`` hash alike). Unknown keys are refused: a typo in a
# sweep file must not silently become a default. A tuple key takes a list or tuple of numbers
# (normalised to a sorted tuple of floats).
CONFIG_TYPES: dict[str, type] = {
    "dataset": str, "data_dir": str, "cache_dir": str, "train_size": int, "val_size": int,
    "test_size": int, "image_size": int, "flip": bool, "subset_seed": int,
    "synthetic_seed": int, "transform_seed": int, "depth": int, "w_var": float,
    "b_var": float, "width": int, "max_steps": int, "eval_every": int,
    "checkpoint_every": int, "batch_size": int, "lr_factor": float, "l2": float, "eta0": float,
    "eta0_samples": int, "diag_reg": float, "tile_memory_bytes": int, "kernel_dtype": str,
    "first_layer_init": str, "momentum": float, "eta0_inits": int, "eta0_seed": int,
    "train_eval_size": int, "eval_batch_size": int, "diverge_loss": float,
    "early_stop_train_acc": float, "path_t": float, "keep_checkpoints": int, "tile_side": int,
    "store_predictions": bool,
    # kernel regression's regulariser chosen on the validation split over this grid
    # (relative to the mean train-kernel diagonal; workers/kernel_trial.py); a tuple of floats
    "diag_reg_grid": tuple,
    # ImageNet (workers/imagenet_train.py): the Flax example's recipe
    "subset": int, "epochs": int, "base_lr": float, "warmup_epochs": float,
    "weight_decay": float, "nesterov": bool, "num_classes": int, "patch_size": int,
    "eval_every_epochs": int, "checkpoint_every_epochs": int, "loader_threads": int,
    "loader_processes": int, "max_train_steps": int,
}

# Scopes. A key is *scientific* (part of trial_id) unless it is a runtime key; a train-only key
# is dropped from kernel trials (it does not change an infinite-width kernel), so kernel cells
# that differ only in training settings are one cell.
RUNTIME_KEYS: frozenset[str] = frozenset({
    "data_dir", "cache_dir",  # where the data is, not what it is
    "tile_memory_bytes",      # how a kernel is tiled, not its value
    "tile_side",              # fixed across m so nested subsets share tiles (figure sweeps)
    "keep_checkpoints",       # what is kept after a run
    "eval_batch_size",        # how evaluation is batched
    "store_predictions",      # also save test predictions as an artifact
    "loader_threads",         # how many threads decode images
    "loader_processes",       # how many processes decode images (same batches either way)
})
TRAIN_ONLY_KEYS: frozenset[str] = frozenset({
    "width", "max_steps", "eval_every", "checkpoint_every", "batch_size", "lr_factor", "l2",
    "eta0", "eta0_samples", "first_layer_init", "momentum", "eta0_inits", "eta0_seed",
    "train_eval_size", "eval_batch_size", "diverge_loss", "early_stop_train_acc",
    "keep_checkpoints", "epochs", "base_lr", "warmup_epochs", "weight_decay", "nesterov",
    "patch_size", "eval_every_epochs", "checkpoint_every_epochs", "loader_threads",
    "loader_processes", "max_train_steps",
})
KERNEL_ONLY_KEYS: frozenset[str] = frozenset({"diag_reg", "diag_reg_grid", "kernel_dtype",
                                              "tile_memory_bytes", "tile_side"})


def scientific(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a trial config that decides what is computed (hashed into trial_id)."""
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
