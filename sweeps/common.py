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

__all__ = ["CPU_RESOURCES", "GPU_RESOURCES", "NETWORK", "PAPER_CONFIG", "PAPER_WIDTHS",
           "paper_preset", "smoke_config"]

# The networks' hyper-parameters (docs/protocol.md, "M").
NETWORK = dict(w_var=2.0, b_var=0.01)

# The paper's finite-width training and data protocol at 32x32 (docs/protocol.md, "D", "I").
PAPER_CONFIG: dict[str, Any] = dict(
    dataset="cifar10", val_size=5000, depth=8, **NETWORK, max_steps=1_000_000,
    eval_every=10_000, checkpoint_every=10_000, batch_size=40)


# A cluster: finite nets share a GPU four ways; a kernel cell runs its tiles on whole GPUs.
GPU_RESOURCES: dict[str, dict[str, float]] = dict(
    train=dict(cpu=1, gpu=0.25), kernel=dict(cpu=1, tile_cpu=1, tile_gpu=1))
# A workstation: one CPU per trial (the driver limits each trial's XLA threads to it).
CPU_RESOURCES: dict[str, dict[str, float]] = dict(train=dict(cpu=1), kernel=dict(cpu=1))


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
