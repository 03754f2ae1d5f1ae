"""What the sweep files share: the paper's training protocol, the smoke settings, resources.

A sweep file states only what is particular to its figure (axes, sizes, the widths it uses)
and builds its presets from these, in the style of big_vision's ``configs/common.py``:

    from sweeps.common import paper_preset, smoke_config
    PAPER = paper_preset("the paper: ...", width={"vec": 128})

The protocol is docs/protocol.md ("I"): depth 8, sigma_w^2 = 2, sigma_b^2 = 0.01, batch 40, up
to 10^6 SGD steps, a run succeeds at 95% training accuracy, the 45k / 5k / 10k CIFAR-10 split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.spec import Preset
from workers.vocab import PAPER_WIDTHS

__all__ = ["CPU_RESOURCES", "DIAG_REG_GRID", "GPU_RESOURCES", "IMAGENET_CPU_CONFIG",
           "IMAGENET_GPU_RESOURCES", "IMAGENET_PAPER_CONFIG", "IMAGENET_PAPER_WIDTHS",
           "IMAGENET_SMOKE_CONFIG", "IMAGENET_SUBSETS", "NETWORK", "PAPER_CONFIG",
           "PAPER_WIDTHS", "diag_reg_on_validation", "imagenet_preset", "paper_preset",
           "smoke_config"]

# The networks' hyper-parameters (docs/protocol.md, "M").
NETWORK = dict(w_var=2.0, b_var=0.01)

# The paper's finite-width training and data protocol at 32x32 (docs/protocol.md, "D", "I").
PAPER_CONFIG: dict[str, Any] = dict(
    dataset="cifar10", val_size=5000, depth=8, **NETWORK, max_steps=1_000_000,
    eval_every=10_000, checkpoint_every=10_000, batch_size=40)


# A cluster: finite nets share a GPU four ways; a kernel cell holds one CPU and runs its
# tiles on whole GPUs anywhere in the cluster, up to 8 at a time (so kernel cells take at most
# 8 GPUs each: the finite runs keep the rest).
GPU_RESOURCES: dict[str, dict[str, float]] = dict(
    train=dict(cpu=1, gpu=0.25), kernel=dict(cpu=1, tile_cpu=0, tile_gpu=1, tile_inflight=8))
# A workstation: one CPU per trial (the driver limits each trial's XLA threads to it).
CPU_RESOURCES: dict[str, dict[str, float]] = dict(train=dict(cpu=1), kernel=dict(cpu=1))


# Candidate kernel regularisers, relative to the mean train-kernel diagonal, a decade apart
# from 1e-8 (near interpolation) to 1: the range over which Lee et al. (2020, "Finite versus
# infinite neural networks") find the held-out optimum of NTK/NNGP regression.
DIAG_REG_GRID: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def diag_reg_on_validation(val_size: int, grid: tuple[float, ...] = DIAG_REG_GRID,
                           ) -> tuple[dict[str, str], dict[str, Any]]:
    """A preset rule that makes its kernel trials choose ``diag_reg`` on ``val_size``
    validation images over ``grid`` (`workers.kernel_trial`); the preset's fixed ``diag_reg``
    (default 1e-6) is still computed and reported beside it (``fixed_reg_test_acc``). Add it
    to a preset's ``rules``; presets without it run as before::

        rules=(diag_reg_on_validation(1000), ...)
    """
    return ({"kind": "kernel"}, {"diag_reg_grid": tuple(grid), "val_size": int(val_size)})


def smoke_config(**overrides: Any) -> dict[str, Any]:
    """The smoke presets' config: synthetic 8x8 images, depth 2, 300 SGD steps, eta_0 from 64
    points and one initialisation; minutes on 2 CPU cores. ``overrides`` replace or add keys."""
    cfg: dict[str, Any] = dict(
        dataset="synthetic", image_size=8, train_size=256, val_size=0, test_size=256, depth=2,
        **NETWORK, max_steps=300, eval_every=100, checkpoint_every=300, batch_size=40,
        eta0_samples=64, eta0_inits=1)
    cfg.update(overrides)
    return cfg


def paper_preset(description: str, *, width: Mapping[str, int] | None = None,
                 seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
                 resources: Mapping[str, Mapping[str, float]] | None = None,
                 rules: tuple[Any, ...] = (), **config: Any) -> Preset:
    """The `paper` preset of a figure: `PAPER_CONFIG` plus ``config`` (extra or replaced keys),
    success at 95% training accuracy, three retries, GPU resources.

    ``width``: arch -> width for the finite nets the figure trains (default: none, a kernel-only
    figure). ``resources``: default `GPU_RESOURCES`."""
    return Preset(description=description, config={**PAPER_CONFIG, **config},
                  width=dict(width or {}), seeds=seeds, rules=rules,
                  resources=dict(resources if resources is not None else GPU_RESOURCES),
                  success_train_acc=0.95, max_failures=3)


# ----------------------------------------------------------------------------- ImageNet
# Sec. 6.2 / App. B.2, B.3, F.2 (docs/protocol.md, "ImageNet"): Flax's ImageNet example recipe
# (workers/imagenet_train.py) with 150 epochs, batch 1024, at 224x224; subsets m_i = 2^(-i/2) m
# for i in [12] = {0, ..., 11} (``subset`` = i; 0 = all of ImageNet): the paper counts [d] from
# 0 (A_0 ... A_{d-1}, App. E) and fits "the first/last six points (i.e., i >= 6 / i < 6)"
# (Sec. 6.2), six points on each side of i = 6 (docs/protocol.md, "ImageNet").
IMAGENET_SUBSETS: list[int] = list(range(12))
IMAGENET_PAPER_WIDTHS: dict[str, int] = dict(
    resnet18=64, resnet34=64, resnet50=64, resnet101=64, resnet152=64, resnet200=64,
    mixer_s16=512)
IMAGENET_PAPER_CONFIG: dict[str, Any] = dict(
    dataset="imagenet", image_size=224, num_classes=1000, epochs=150, batch_size=1024,
    base_lr=0.1, warmup_epochs=5.0, weight_decay=1e-4, momentum=0.9, nesterov=True,
    eval_every_epochs=1, checkpoint_every_epochs=1, eval_batch_size=250, loader_threads=30)
# one trial = one 8-GPU node: the batch is sharded over the trial's GPUs; JPEG decoding at 224
# needs many cores (on the order of 1,000 images/s per 8 cores), hence 32 CPUs a trial
IMAGENET_GPU_RESOURCES: dict[str, dict[str, float]] = dict(train=dict(cpu=32, gpu=8))
# the smoke presets: a generated ImageNet-layout folder (4 classes, 64 + 16 images a class,
# about 20 pixels a side; built once under the cache), 16x16 crops, tiny nets, 2 epochs
IMAGENET_SMOKE_CONFIG: dict[str, Any] = dict(
    dataset="imagenet", data_dir="synthetic://4x64x20", image_size=16, epochs=2, batch_size=32,
    base_lr=0.4, warmup_epochs=0.5, eval_every_epochs=1, checkpoint_every_epochs=1,
    eval_batch_size=64, loader_threads=2)
# the cpu presets: CIFAR-10 (the JPEG copy in ../shared/data) written once into the ImageNet
# layout and read through the same pipeline, 32x32 crops: a stand-in, not ImageNet
IMAGENET_CPU_CONFIG: dict[str, Any] = dict(
    dataset="imagenet", data_dir="cifar10://../shared/data", image_size=32, num_classes=10,
    epochs=10, batch_size=128, base_lr=0.1, warmup_epochs=1.0, eval_every_epochs=5,
    checkpoint_every_epochs=5, test_size=2000, eval_batch_size=500, loader_threads=2)


def imagenet_preset(description: str, config: Mapping[str, Any], width: Mapping[str, int], *,
                    resources: Mapping[str, Mapping[str, float]] | None = None,
                    mixer: Mapping[str, int] | None = None,
                    rules: tuple[tuple[Mapping[str, Any], Mapping[str, Any]], ...] = (),
                    seeds: tuple[int, ...] = (0,), **overrides: Any) -> Preset:
    """A preset of the ImageNet sweeps: ``config`` plus ``overrides``, every finished run counts
    (no 95% training-accuracy criterion on ImageNet), two retries (a retry resumes from the
    last epoch's checkpoint). ``seeds``: the runs per cell (init, data order and tau; default
    one, Fig. 5; Fig. S4's paper preset has the caption's three); the description says how
    many. ``resources``: default `CPU_RESOURCES`. ``mixer``: depth (blocks) and patch_size of
    the Mixer when not Mixer-S/16's (8 blocks, 16x16). ``rules``: further (when, set) pairs
    (`orchestrator.spec.Rule`), applied after the Mixer's."""
    rules = ((({"arch": "mixer_s16"}, dict(mixer)),) if mixer else ()) + tuple(rules)
    return Preset(description=description, config={**config, **overrides},
                  width=dict(width), seeds=tuple(seeds), rules=rules,
                  resources=dict(resources if resources is not None else CPU_RESOURCES),
                  success_train_acc=0.0, max_failures=2)
