"""Fig. 5 and Fig. 4 (right) of Xiao & Pennington (2022): ImageNet learning curves and the
ResNet-family gap between clean and pixel-rotated ImageNet (Sec. 6.2, App. B.2/B.3).

Fig. 5: top-1 error against the training-set size m_i = 2^(-i/2) m_ImageNet, i in [12] =
{0, ..., 11} (``subset`` = i; nested, class-balanced subsets; i = 0 is all of ImageNet, the
paper counts [d] from 0 as A_0 ... A_{d-1} in App. E) for four triplets: (ImageNet,
ResNet-101, SGD), (O(3)^d-rotated ImageNet, ResNet-101, SGD), (ImageNet, Mixer, SGD), (rotated
ImageNet, Mixer, SGD); `symsweep table fig5` fits power laws (log-log slopes) on the first six
and the last six points, i >= 6 and i < 6 as the paper says (the paper: 0.41 for the clean
ResNet-101, 0.49 / 0.38 for the rotated ResNet-101 and the clean Mixer on the second segment,
a cusp near m_6 ~ 2e5).
Fig. 4 (right): top-1 accuracy on rotated against clean ImageNet (all of it, ``subset`` = 0),
one point per ResNet depth (the paper: a gap of about 10 points at ResNet-18, about 6 at
ResNet-200). The full-data ResNet-101 runs end the curves and are the scatter's ResNet-101 point:
one trial each, in the CURVES part only (the SCATTER part leaves the curve archs out). Training:
Flax's ImageNet example recipe with 150 epochs (workers/imagenet_train.py); the same tau for
train and val images. One seed per cell at every preset.

    symsweep run sweeps/fig5.py --preset smoke ; symsweep table fig5 ; symsweep plot fig5

Presets:
- smoke: a generated ImageNet-layout folder (4 classes, 64 training images each, built once
  under the cache), 16x16 crops, ResNet-18 (width 4) and a 2-block Mixer (width 16, 4x4
  patches) stand in for ResNet-101 and Mixer-S/16, subsets i = 0, 3, 6, 9, ResNet-18/34 for
  the scatter (ResNet-18's full-data runs are the curve's), 2 epochs: minutes on 2 cores, for
  tests.
- cpu: a STAND-IN, not ImageNet: the 50k + 10k CIFAR-10 JPEGs (../shared/data) written once
  into the ImageNet layout and read by the same pipeline (32x32 crops, 10 classes),
  ResNet-18 at width 16 for the ResNet curves, a 2-block Mixer (width 64, 4x4 patches) for the
  Mixer, subsets i = 0..11 (50,000 .. 1,105 images); ResNet-18/34/50 at width 8 on all 50,000
  images for the scatter (8, not 16: at width 16 the three depths would take longer than the
  four curves together; so the scatter's ResNet-18 is another trial than the curve's i = 0).
  10 epochs, batch 128, 2,000 val images. About two hours on 2 cores: the 24 trials of
  i = 1..5 and the scatter ran in 83 min at load 4 to 7 (2026-12-01), the 24 smaller ones of
  i = 6..11 are about a fifth of the steps, the 4 of i = 0 about 1.4 times i = 1's.
- paper: ILSVRC-2012 (``--data-dir`` the folder with train/ and val/), 224x224, batch 1024,
  150 epochs, ResNet-101 and Mixer-S/16, ResNet-18 .. 200 for the scatter, one 8-GPU node a
  trial, a checkpoint every epoch (a retry or `symsweep resume` continues from it).
"""

from orchestrator.spec import CompositeSweep, Sweep
from sweeps.common import (
    IMAGENET_CPU_CONFIG,
    IMAGENET_GPU_RESOURCES,
    IMAGENET_PAPER_CONFIG,
    IMAGENET_PAPER_WIDTHS,
    IMAGENET_SMOKE_CONFIG,
    IMAGENET_SUBSETS,
    imagenet_preset,
)

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"]
TRANSFORMS = ["identity", "pixel_rotation"]

SMOKE = imagenet_preset(
    "generated 4-class folder, 16x16, resnet18 w4 + mixer w16 (2 blocks, 4x4 patches), "
    "subsets 0, 3, 6, 9, 2 epochs, 1 seed", IMAGENET_SMOKE_CONFIG,
    width={**dict.fromkeys(RESNETS, 4), "mixer_s16": 16}, mixer=dict(depth=2, patch_size=4))
CPU = imagenet_preset(
    "STAND-IN: CIFAR-10 JPEGs through the ImageNet pipeline, 32x32, resnet18 w16 + mixer w64 "
    "(2 blocks, 4x4 patches), subsets 0..11; resnet18/34/50 w8 on all images; 10 epochs, "
    "1 seed", IMAGENET_CPU_CONFIG,
    width={**dict.fromkeys(RESNETS, 16), "mixer_s16": 64}, mixer=dict(depth=2, patch_size=4))
# the cpu scatter is narrower than the curves: its own preset (same name, same scale), so the
# curves' full-data points (i = 0) keep the curves' widths
CPU_SCATTER = imagenet_preset(
    CPU.description, IMAGENET_CPU_CONFIG, width=dict.fromkeys(RESNETS, 8))
PAPER = imagenet_preset(
    "the paper: ILSVRC-2012 (--data-dir), 224x224, batch 1024, 150 epochs, ResNet-101 and "
    "Mixer-S/16, subsets 0..11 (0 = all); ResNet-18..200 on all of ImageNet; 1 seed",
    IMAGENET_PAPER_CONFIG, width=IMAGENET_PAPER_WIDTHS, resources=IMAGENET_GPU_RESOURCES)
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

# the models of the curves (the smoke and cpu presets swap in small ones, same roles)
CURVE_ARCHS = {"smoke": ["resnet18", "mixer_s16"], "cpu": ["resnet18", "mixer_s16"],
               "paper": ["resnet101", "mixer_s16"]}
SCATTER_ARCHS = {"smoke": ["resnet18", "resnet34"], "cpu": ["resnet18", "resnet34", "resnet50"],
                 "paper": RESNETS}  # the depths of Fig. 4 (right)

# Fig. 5: the learning curves, i = 0..11 (i = 0: all images, the end of each curve)
CURVES = CompositeSweep("fig5", [Sweep(name="fig5", presets=PRESETS, axes=dict(
    inference=["nn"], arch=CURVE_ARCHS["paper"], transform=TRANSFORMS,
    subset=IMAGENET_SUBSETS))], preset_axes={
        "smoke": {"arch": CURVE_ARCHS["smoke"], "subset": [0, 3, 6, 9]},
        "cpu": {"arch": CURVE_ARCHS["cpu"]}})
# Fig. 4 (right): every ResNet depth on all of the (clean or rotated) training set; a depth the
# curves train at the same width already (ResNet-101 in the paper, ResNet-18 at smoke) is their
# i = 0 trial, so it is left out here: one trial, read by both panels
SCATTER = CompositeSweep("fig5", [Sweep(
    name="fig5", presets=dict(PRESETS, cpu=CPU_SCATTER), axes=dict(
        inference=["nn"], arch=[a for a in RESNETS if a not in CURVE_ARCHS["paper"]],
        transform=TRANSFORMS, subset=[0]))], preset_axes={
    "smoke": {"arch": [a for a in SCATTER_ARCHS["smoke"] if a not in CURVE_ARCHS["smoke"]]},
    "cpu": {"arch": SCATTER_ARCHS["cpu"]}})  # w8, not the curves' w16: no overlap

SWEEP = CompositeSweep(
    "fig5", [CURVES, SCATTER], description=__doc__.splitlines()[0],
    analysis={"fit_first": 6, "fit_last": 6},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
