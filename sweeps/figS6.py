"""Fig. S6 of Xiao & Pennington (2022): infinite-width scaling laws.

NTK regression learning curves, test MSE and accuracy against the training-set size m, for
every architecture and every transform. `symsweep table figS6` fits a power law to each curve
(slope on log-log, with R^2 and the slope's standard error) and prints the exponents as an
arch x transform table; the paper finds clean power laws whose exponents the spurious symmetry
dictates. Kernel cells that Theorem 4.1 makes equal are computed once; subsets are nested and
the tile side is fixed (``tile_side``), so a larger m reuses the cached tiles of smaller ones.

    symsweep run sweeps/figS6.py --preset smoke ; symsweep table figS6 ; symsweep plot figS6

Presets:
- smoke: synthetic 8x8, depth 2, m = 40 .. 320, 256 test images.
- cpu: CIFAR-10 pooled to 8x8, depth 8, m = 125 .. 1,000, 500 test images.
- paper: 32x32, depth 8, m = 320 .. 40,960 and 45,000, the 10k test set; GPUs.
"""

from orchestrator.spec import CompositeSweep, Preset, Sweep
from sweeps.common import GPU_RESOURCES, paper_preset
from workers.vocab import ARCHS, TRANSFORMS

SIZES = {"smoke": [40, 80, 160, 320], "cpu": [125, 250, 500, 1000],
         "paper": [320 * 2 ** k for k in range(8)] + [45_000]}

SMOKE = Preset(
    description="synthetic 8x8, depth 2, m 40..320, 256 test images",
    config=dict(dataset="synthetic", image_size=8, val_size=0, test_size=256, depth=2,
                w_var=2.0, b_var=0.01, tile_side=40),
    resources=dict(kernel=dict(cpu=1)),
)
CPU = Preset(
    description="CIFAR-10 pooled to 8x8, depth 8, m 125..1000, 500 test images",
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, val_size=0,
                test_size=500, depth=8, w_var=2.0, b_var=0.01, tile_side=125),
    resources=dict(kernel=dict(cpu=1)),
)
PAPER = paper_preset(
    "the paper: 32x32, depth 8, m 320..45k, 10k test images; GPUs",
    resources={"kernel": GPU_RESOURCES["kernel"]}, val_size=0, tile_side=320)
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

CURVES = Sweep(name="figS6", presets=PRESETS, axes=dict(
    inference=["ntk"], arch=list(ARCHS), transform=list(TRANSFORMS),
    train_size=SIZES["paper"]))

SWEEP = CompositeSweep(
    "figS6", [CURVES], description=__doc__.splitlines()[0],
    preset_axes={p: {"train_size": s} for p, s in SIZES.items()},
    analysis={"fit_first": 2, "fit_last": 2},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
