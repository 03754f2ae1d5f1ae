"""Fig. S4 of Xiao & Pennington (2022): ImageNet training dynamics of the ResNet family under
the identity, the per-pixel rotation O(3)^d and the permutation P(3d) (App. F.2).

Test top-1 accuracy against the epoch for ResNet-18 .. ResNet-200 on all of ImageNet, each
trained with Flax's ImageNet example recipe (150 epochs) on the clean, the O(3)^d-rotated and
the P(3d)-permuted images (a fixed tau per run, the same for train and val). The figure draws
the mean over seeds and, with more than one, their range shaded. The paper: P(3d) stays
below 35% for every depth; O(3)^d costs a few points. The curves come from each trial's
per-epoch history (`symsweep plot figS4`); `symsweep table figS4` gives the final and best
accuracy per depth and transform.

    symsweep run sweeps/figS4.py --preset smoke ; symsweep table figS4 ; symsweep plot figS4

Presets:
- smoke: the generated 4-class folder, 16x16, ResNet-18/34 at width 4, 3 epochs, one seed.
- cpu: a STAND-IN, not ImageNet: CIFAR-10 JPEGs through the ImageNet pipeline (32x32,
  10 classes), ResNet-18/34/50 at width 16, 10 epochs, evaluated every epoch, one seed.
- paper: ILSVRC-2012, 224x224, batch 1024, 150 epochs, ResNet-18 .. 200, three seeds (the
  caption: "Averaged over 3 runs"; each seed its own init, data order and tau), one 8-GPU node
  a trial, a checkpoint every epoch.
"""

from orchestrator.spec import CompositeSweep, Sweep
from sweeps.common import (
    IMAGENET_CPU_CONFIG,
    IMAGENET_GPU_RESOURCES,
    IMAGENET_PAPER_CONFIG,
    IMAGENET_PAPER_WIDTHS,
    IMAGENET_SMOKE_CONFIG,
    imagenet_preset,
)

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"]

SMOKE = imagenet_preset(
    "generated 4-class folder, 16x16, resnet18/34 w4, 3 epochs, 1 seed",
    IMAGENET_SMOKE_CONFIG, width=dict.fromkeys(RESNETS, 4), epochs=3)
CPU = imagenet_preset(
    "STAND-IN: CIFAR-10 JPEGs through the ImageNet pipeline, 32x32, resnet18/34/50 w16, "
    "10 epochs, 1 seed", IMAGENET_CPU_CONFIG, width=dict.fromkeys(RESNETS, 16),
    eval_every_epochs=1)
# the caption: "Averaged over 3 runs" (each run its own init, data order and tau)
PAPER = imagenet_preset(
    "the paper: ILSVRC-2012 (--data-dir), 224x224, batch 1024, 150 epochs, ResNet-18..200, "
    "3 seeds (the caption's 3 runs)", IMAGENET_PAPER_CONFIG, width=IMAGENET_PAPER_WIDTHS,
    resources=IMAGENET_GPU_RESOURCES, seeds=(0, 1, 2))
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

SWEEP = CompositeSweep(
    "figS4", [Sweep(name="figS4", presets=PRESETS, axes=dict(
        inference=["nn"], arch=RESNETS,
        transform=["identity", "pixel_rotation", "permutation"], subset=[0]))],
    description=__doc__.splitlines()[0],
    preset_axes={"smoke": {"arch": ["resnet18", "resnet34"]},
                 "cpu": {"arch": ["resnet18", "resnet34", "resnet50"]}},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
