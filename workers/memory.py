"""Peak memory (bytes of host RAM) of one trial, estimated from its shapes without running it.

Used by ``symsweep plan`` (printed next to the time of each trial kind) and by the runner (the
``memory`` resource a trial requests from Ray, so the scheduler never packs more trials onto a
node than fit). Every term is a count of the arrays the code allocates, not a fit to
measurements; ``benchmarks/memory.py`` measures the kernel terms (tracemalloc) and
``tests/test_kernel_memory.py`` checks the estimate against tracemalloc on a small case.

Kernel trial (``workers.kernel_trial.run_kernel_trial``), N train, V val, M test images:

* matrices: NNGP + NTK of the reported arch only (2 x N (N + V + M) x itemsize); the other
  readouts of a shared gap/lap propagation go to the tile cache, never into an (N, N) array;
* the regression: one float64 N x N working copy, factored in place (8 N^2), plus row blocks
  of 1024 x N float64 for the products (`workers.regression`);
* with ``diag_reg_grid`` (G values), the regulariser chosen on the validation split: the
  eigendecomposition's working copy and eigenvectors (2 x 8 N^2), the grid's dual coefficients
  (8 G N K) and the validation predictions of the whole grid in row blocks (8 x 1024 x G K);
* one tile in flight: `workers.kernels.tile_bytes` of the tile `plan_tiles` lays out (bounded
  by the tile memory budget), alive only while the matrices are assembled (not during the
  solve);
* the images: float32 (N + V + M) x H x W x C, counted twice (the loaded split and the
  transformed copy `workers.data.build_dataset` returns);
* a fixed process overhead (`PROCESS_BYTES`: Python, NumPy, JAX/XLA runtime and compiled code).

Peak = process + images + matrices + max(tile, solve).

Train trial (``workers.train.train``): P parameters (counted per arch from the layer shapes of
`workers.models`, checked against the model in a test):

* optimiser state: parameters, momentum, gradients and the update (4 x 4P bytes) and a
  checkpoint's host copy of parameters and momentum (2 x 4P);
* the images as for a kernel trial (numpy split + device copy);
* the largest of: one SGD step's activations kept for the backward pass (3 arrays per hidden
  layer: input, pre-activation, ReLU output, of batch x layer size floats; lcn adds its 3x3
  patches, 9 x the layer's input), the evaluation forward pass (two layers alive, 500 images
  per batch), and the eta_0 NTK-vector product on ``eta0_samples`` images (linearisation
  residuals and one tangent: 4 arrays per hidden layer);
* the fixed process overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.vocab import FULL_COV_ARCHS

# Python + NumPy + JAX/XLA runtime and compiled kernels of one trial process (measured RSS of
# a worker after importing jax and compiling one tile is 0.4-0.6 GB on CPU; rounded up).
PROCESS_BYTES = 1 << 30
# one grain loader worker process (`workers.imagenet.stream_batches`), before its images
LOADER_WORKER_BYTES = 256 << 20
_SOLVE_BLOCK = 1024  # rows per block in workers.regression
_EVAL_BATCH = 500    # images per batch of Trainer.predict
NUM_CLASSES = 10


def kernel_trial_bytes(
    n_train: int, n_val: int, n_test: int, *,
    arch: str, image_shape: Sequence[int] = (32, 32, 3), itemsize: int = 4,
    archs_computed: Sequence[str] | None = None, tile_memory_bytes: int | None = None,
    tile_side: int | None = None, num_classes: int = NUM_CLASSES, grid_size: int = 0,
) -> dict[str, int]:
    """Estimated peak bytes of one kernel trial, by component (see the module docstring).

    n_*: images per split (train including flips); arch: the reported arch; itemsize: 4
    (float32 kernels) or 8; archs_computed: archs each tile computes (default: gap/lap4/lap8
    together for a full-covariance arch, else arch); grid_size: values of ``diag_reg_grid``
    (0: a fixed diag_reg). Returns a dict with keys process, images,
    matrices, tile, solve, peak (all int bytes).
    """
    from workers.kernels import DEFAULT_MEMORY_BYTES, plan_tiles, tile_bytes

    comp = list(archs_computed or (FULL_COV_ARCHS if arch in FULL_COV_ARCHS else (arch,)))
    h, w, c = (int(s) for s in image_shape)
    n, v, m = int(n_train), int(n_val), int(n_test)
    matrices = 2 * n * (n + v + m) * itemsize
    tile = 0
    if n:
        budget = int(tile_memory_bytes or DEFAULT_MEMORY_BYTES)
        r0, r1, c0, c1 = plan_tiles(n, n, archs=comp, image_shape=(h, w, c),
                                    memory_bytes=budget, symmetric=True, itemsize=itemsize,
                                    max_side=tile_side)[0]
        # the tile's working set plus its result dict handed over (all computed readouts)
        tile = tile_bytes(r1 - r0, c1 - c0, archs=comp, image_shape=(h, w, c),
                          itemsize=itemsize) + 2 * len(comp) * (r1 - r0) * (c1 - c0) * itemsize
    solve = 8 * n * n + 2 * 8 * _SOLVE_BLOCK * n + 3 * 8 * n * num_classes if n else 0
    if n and grid_size:  # eigh: working copy + eigenvectors, the grid's alphas, val blocks
        g = int(grid_size)
        solve = max(solve, 2 * 8 * n * n + 8 * g * n * num_classes
                    + 8 * _SOLVE_BLOCK * (n + g * num_classes) + 3 * 8 * n * num_classes)
    images = 2 * 4 * (n + v + m) * h * w * c
    peak = PROCESS_BYTES + images + matrices + max(tile, solve)
    return {"process": PROCESS_BYTES, "images": images, "matrices": matrices, "tile": tile,
            "solve": solve, "peak": int(peak)}


def param_count(arch: str, width: int, depth: int, image_shape: Sequence[int],
                num_classes: int = NUM_CLASSES) -> int:
    """Scalar parameters of `workers.models.make_model(arch, width, depth=depth)` on images of
    image_shape (H, W, C), from the layer shapes in that module's docstring."""
    h, w, c = (int(s) for s in image_shape)
    hw, k = h * w, int(num_classes)
    total, fan_in = 0, c
    for i in range(int(depth)):
        if arch == "fcn":
            fi = hw * c if i == 0 else width
            total += fi * width + width
        elif arch == "lcn":
            total += hw * 9 * fan_in * width + hw * width
        else:  # conv archs
            total += 9 * fan_in * width + width
        fan_in = width
    ch = width if depth else c  # channels reaching the readout
    if arch == "fcn":
        feat = width if depth else hw * c
    elif arch == "gap":
        feat = ch
    elif arch in ("lap4", "lap8"):
        kk = int(arch[3:])
        feat = (h // kk) * (w // kk) * ch
    else:
        feat = hw * ch
    return int(total + feat * k + k)


def train_trial_bytes(
    arch: str, width: int, depth: int, *, image_shape: Sequence[int] = (32, 32, 3),
    batch_size: int = 40, n_train: int, n_val: int, n_test: int, eta0_samples: int = 256,
    eta0_given: bool = False, num_classes: int = NUM_CLASSES,
) -> dict[str, int]:
    """Estimated peak bytes of one finite-width training trial, by component (module
    docstring). Returns a dict with keys process, params, state, images, activations, eta0,
    eval, peak (int bytes)."""
    h, w, c = (int(s) for s in image_shape)
    hw = h * w
    p = param_count(arch, width, depth, image_shape, num_classes)
    state = (4 + 2) * 4 * p
    layer = width if arch == "fcn" else hw * width  # floats per image per hidden layer
    per_image = 3 * depth * layer
    if arch == "lcn":
        per_image += 9 * hw * (c + (depth - 1) * width)
    activations = 4 * int(batch_size) * per_image
    n_eta = 0 if eta0_given else min(int(eta0_samples), int(n_train))
    eta0 = 4 * n_eta * (4 * depth * layer + (9 * hw * width * depth if arch == "lcn" else 0))
    evals = 4 * min(_EVAL_BATCH, max(n_train, n_val, n_test, 1)) * (2 * layer + hw * c)
    images = 2 * 4 * (int(n_train) + int(n_val) + int(n_test)) * hw * c
    peak = PROCESS_BYTES + state + images + max(activations, eta0, evals)
    return {"process": PROCESS_BYTES, "params": 4 * p, "state": state, "images": images,
            "activations": activations, "eta0": eta0, "eval": evals, "peak": int(peak)}


def trial_bytes(kind: str, config: dict[str, Any], sizes: dict[str, int]) -> int:
    """Peak bytes of a trial of kind 'kernel' | 'train' with this config and images per split
    (sizes: train, val, test; train counting flips)."""
    s = int(config.get("image_size") or 32)
    shape = (s, s, 3)
    if config.get("dataset") == "imagenet":
        return imagenet_trial_bytes(config)
    if kind == "kernel":
        return kernel_trial_bytes(
            sizes["train"], sizes["val"], sizes["test"], arch=config["arch"],
            image_shape=shape,
            itemsize=np.dtype(config.get("kernel_dtype") or "float32").itemsize,
            tile_memory_bytes=config.get("tile_memory_bytes"),
            tile_side=int(config["tile_side"]) if config.get("tile_side") else None,
            grid_size=len(config.get("diag_reg_grid") or ()))["peak"]
    return train_trial_bytes(
        config["arch"], int(config["width"]), int(config.get("depth", 8)), image_shape=shape,
        batch_size=int(config.get("batch_size", 40)), n_train=sizes["train"],
        n_val=sizes["val"], n_test=sizes["test"],
        eta0_samples=int(config.get("eta0_samples", 256)),
        eta0_given=bool(config.get("eta0")))["peak"]


def imagenet_trial_bytes(config: dict[str, Any], n_files: int = 1_281_167 + 50_000) -> int:
    """Peak host bytes of an ImageNet trial (`workers.imagenet_train`): the process, the file
    list (about 200 B a path in Python strings), parameters with momentum and a device_get copy
    for evaluation and checkpoints (4 copies of float32 P, P from jax.eval_shape), one global
    batch as float32 on the host before it moves to the devices, twice, and the images
    read ahead (2 x loader_threads: training, or evaluation only when processes read the
    training images); with ``loader_processes`` P > 0, also P grain workers of
    `LOADER_WORKER_BYTES` each (measured: ~250 MB RSS, Python + numpy + PIL + grain + the jax
    module grain imports) holding up to 3 chunks of `workers.imagenet.chunk_rows` images (the
    one being built, the one in its buffer, the one in shared memory in flight), and during an
    evaluation as many again holding up to 3 eval batches each. Activations live on the
    accelerator (not counted here)."""
    from workers.imagenet_models import make_imagenet_model, param_count

    s = int(config.get("image_size") or 224)
    model = make_imagenet_model(str(config["arch"]), width=config.get("width"),
                                depth=config.get("depth"), patch_size=config.get("patch_size"),
                                num_classes=int(config.get("num_classes") or 1000))
    p = param_count(model, (s, s, 3))
    img = 4 * s * s * 3
    batch = 2 * int(config.get("batch_size") or 1024) * img
    ahead = 2 * int(config.get("loader_threads") or 8) * img
    procs = int(config.get("loader_processes") or 0)
    if procs:
        from workers.imagenet import chunk_rows

        # training workers (chunks) and, while they wait, the evaluation's (whole eval
        # batches: the one being built, one in the buffer, one in use)
        ahead += procs * (LOADER_WORKER_BYTES + 3 * chunk_rows(
            int(config.get("batch_size") or 1024)) * img)
        ahead += procs * (LOADER_WORKER_BYTES + 3 * int(config.get("eval_batch_size") or 256)
                          * img)
    return int(PROCESS_BYTES + 200 * n_files + 4 * 4 * p + batch + ahead)
