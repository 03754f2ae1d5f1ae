"""`symsweep plan` for the ImageNet sweeps (fig5, figS4): projected accelerator-hours from
FLOP counts, not from timings on this machine.

A ResNet-101 step at 224x224 takes minutes on a laptop CPU and its speed there says little
about a GPU, so the unit here is the FLOP: XLA's cost analysis of the lowered (not compiled,
so cheap) jit-compiled training step of `workers.imagenet_train` (forward, backward, the
Nesterov update, on a batch of 2 images, per image) and of the evaluation forward pass, for
each distinct model and image size. A trial costs

    epochs x floor(m / batch) x batch x train-FLOPs-per-image
    + evaluations x val images x eval-FLOPs-per-image,

m = round(2^(-i/2) m_full) (`workers.imagenet.subset_size`), divided by an ASSUMED sustained
throughput per GPU (``gpu_tflops``, default 35 TFLOP/s: about what an A100 sustains in
TF32 on ResNet-50, ~1,400 images/s x 24.6 GFLOP; pass your own measurement). Wall time packs
whole trials longest-first on nodes of ``gpus_per_trial`` GPUs (the preset's ``gpu``).
m_full and the val size: ILSVRC-2012 (1,281,167 / 50,000) when num_classes is 1000,
``synthetic://CxNxS`` from its spec, ``cifar10://`` 50,000 / 10,000; otherwise the folder is
listed. Data loading (JPEG decoding) is assumed to keep up; it does not with too few CPUs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from orchestrator.spec import Trial

ASSUMED_GPU_TFLOPS = 35.0
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


@lru_cache(maxsize=64)
def model_flops(arch: str, width: int | None, depth: int | None, patch_size: int | None,
                image_size: int, num_classes: int) -> tuple[float, float]:
    """(training-step FLOPs per image, eval forward FLOPs per image) of the ImageNet worker's
    model, from XLA's cost analysis of the lowered computations on a batch of 2 images."""
    import jax
    import jax.numpy as jnp
    import optax

    from workers.imagenet_models import init_variables, make_imagenet_model
    from workers.imagenet_train import make_eval, make_step

    model = make_imagenet_model(arch, num_classes=num_classes, width=width, depth=depth,
                                patch_size=patch_size)
    s = int(image_size)
    v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (s, s, 3)))
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    state = {"params": v["params"], "batch_stats": v.get("batch_stats", {}),
             "opt_state": jax.eval_shape(tx.init, v["params"])}
    x = jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((2,), jnp.int32)
    train = make_step(model, tx, 1e-4, num_classes).lower(state, x, y).cost_analysis()
    ev = make_eval(model).lower(state["params"], state["batch_stats"], x, y).cost_analysis()
    return float(train["flops"]) / 2, float(ev["flops"]) / 2


def split_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(training images, val images) of the folder a config names, without reading images
    where the size is known (module docstring)."""
    from workers.imagenet import CIFAR_PREFIX, SYNTHETIC_PREFIX, resolve_data_dir, scan_split

    d = str(cfg.get("data_dir") or "")
    if d.startswith(SYNTHETIC_PREFIX):
        c, n = (int(v) for v in d[len(SYNTHETIC_PREFIX):].split(":")[0].split("x")[:2])
        return c * n, c * max(n // 4, 1)
    if d.startswith(CIFAR_PREFIX):
        return 50_000, 10_000
    if int(cfg.get("num_classes") or 0) == 1000 or not d:
        return IMAGENET_TRAIN, IMAGENET_VAL
    root = resolve_data_dir(d, cfg.get("cache_dir"))
    return len(scan_split(root, "train")), len(scan_split(root, "val"))


@dataclass
class ImagenetCost:
    """One trial's projected work: images trained on and evaluated, FLOPs, GPU-seconds."""

    trial: Trial
    m: int
    train_images: int
    eval_images: int
    flops: float
    gpu_s: float
    gpus: float


def trial_cost(t: Trial, gpu_tflops: float = ASSUMED_GPU_TFLOPS,
               m_full: int | None = None, n_val: int | None = None) -> ImagenetCost:
    """Projected FLOPs and GPU-seconds of one ImageNet trial (module docstring)."""
    from workers.imagenet import subset_size

    c = t.config
    mf, nv = (m_full, n_val) if m_full else split_sizes(c)
    m = subset_size(mf, int(c.get("subset", 0)))
    batch = min(int(c.get("batch_size", 1024)), m)
    epochs = int(c.get("epochs", 150))
    steps = epochs * (m // batch)
    if c.get("max_train_steps"):
        steps = min(steps, int(c["max_train_steps"]))
    n_eval = min(int(c["test_size"]), nv) if c.get("test_size") else nv
    evals = math.ceil(epochs / int(c.get("eval_every_epochs", 1)))
    f_train, f_eval = model_flops(str(c["arch"]), c.get("width"), c.get("depth"),
                                  c.get("patch_size"), int(c.get("image_size", 224)),
                                  int(c.get("num_classes") or 1000))
    flops = steps * batch * f_train + evals * n_eval * f_eval
    gpus = max(float(t.resources.get("gpu", 0.0)), 1.0)
    return ImagenetCost(t, m, steps * batch, evals * n_eval, flops,
                        flops / (gpu_tflops * 1e12), gpus)


def wall_seconds(costs: list[ImagenetCost], gpus: int) -> float:
    """Longest-first list scheduling of whole trials onto gpus // (GPUs a trial) slots; a
    trial on k GPUs runs k times faster than on one (data parallel, assumed linear)."""
    per = max(int(max((c.gpus for c in costs), default=1)), 1)
    slots = [0.0] * max(gpus // per, 1)
    for c in sorted(costs, key=lambda c: -c.gpu_s):
        heapq.heapreplace(slots, slots[0] + c.gpu_s / c.gpus)
    return max(slots)


def format_plan(name: str, preset: str, costs: list[ImagenetCost], *, gpus: int,
                gpu_tflops: float) -> str:
    """The plan as text: per (arch, transform) group and in total, with what was assumed."""
    lines = [f"{name} [{preset}]: {len(costs)} ImageNet trials; projected from FLOP counts "
             "(XLA cost analysis of the lowered training step and eval pass, batch of 2, per "
             f"image), at an ASSUMED {gpu_tflops:g} TFLOP/s sustained per GPU (--gpu-tflops; "
             "nothing was timed)"]
    groups: dict[tuple[str, str], list[ImagenetCost]] = {}
    for c in costs:
        groups.setdefault((c.trial.config["arch"], c.trial.config["transform"]), []).append(c)
    lines.append(f"  {'arch':<10} {'transform':<15} {'trials':>6} {'m range':>19} "
                 f"{'GFLOP/img train':>16} {'images trained':>15} {'GPU-hours':>10}")
    for (arch, tr), cs in groups.items():
        c0 = cs[0].trial.config
        f_train, _ = model_flops(str(arch), c0.get("width"), c0.get("depth"),
                                 c0.get("patch_size"), int(c0.get("image_size", 224)),
                                 int(c0.get("num_classes") or 1000))
        ms = [c.m for c in cs]
        lines.append(f"  {arch:<10} {tr:<15} {len(cs):>6} {min(ms):>9,}-{max(ms):>9,} "
                     f"{f_train / 1e9:>16.2f} {sum(c.train_images for c in cs):>15,.0f} "
                     f"{sum(c.gpu_s for c in cs) / 3600:>10,.1f}")
    total_h = sum(c.gpu_s for c in costs) / 3600
    total_f = sum(c.flops for c in costs)
    wall = wall_seconds(costs, gpus)
    lines.append(f"  total: {total_f:.3g} FLOP = {total_h:,.0f} GPU-hours; on {gpus} GPUs "
                 f"(whole trials of {int(max((c.gpus for c in costs), default=1))} GPUs each): "
                 f"about {wall / 3600:,.1f} h wall ({wall / 86400:,.1f} days), JPEG decoding "
                 "assumed to keep up")
    return "\n".join(lines) + "\n"


def is_imagenet(trials: list[Trial]) -> bool:
    """True when every trial trains on an image folder (``dataset="imagenet"``)."""
    return bool(trials) and all(t.config.get("dataset") == "imagenet" for t in trials)


def plan_imagenet(name: str, preset: str, trials: list[Trial], *, gpus: int = 64,
                  gpu_tflops: float = ASSUMED_GPU_TFLOPS) -> str:
    """The formatted ImageNet plan of ``trials`` (see `format_plan`)."""
    costs = [trial_cost(t, gpu_tflops) for t in trials]
    return format_plan(name, preset, costs, gpus=gpus, gpu_tflops=gpu_tflops)


__all__ = ["ASSUMED_GPU_TFLOPS", "IMAGENET_TRAIN", "IMAGENET_VAL", "ImagenetCost",
           "format_plan", "is_imagenet", "model_flops", "plan_imagenet", "split_sizes",
           "trial_cost", "wall_seconds"]
