"""Fig. 4 of Xiao & Pennington (2022): learning curves and data-improves-data-efficiency (DIDE).

Test accuracy and test MSE against the training-set size m = 320, 640, ... up to 45k, plus 90k
made of the 45k images and their left-right flips, for four triplets:
(CIFAR-10, VEC_n, NN+) the baseline; (CIFAR-10, VEC_inf, NTK); (CIFAR-10, LCN_n, NN+);
(pixel-rotated CIFAR-10, VEC_n, NN+). `symsweep table fig4` fits power laws (slope on log-log)
to the error and MSE over the first and the last points (``analysis`` below, or
--fit-first/--fit-last); the paper finds only the baseline steepens at large m.

Subsets are nested (a smaller m is a prefix of a larger one) and the NTK trials use a fixed
kernel tile side (``tile_side``, a divisor of every m but the flipped one), so each larger m
reuses the cached tiles of the smaller ones and computes only the tiles with new images.

    symsweep run sweeps/fig4.py --preset smoke ; symsweep table fig4 ; symsweep plot fig4

Presets:
- smoke: synthetic 8x8, depth 2, m = 40 .. 320 and 640 (320 + flips), 2 seeds, 300 steps.
- cpu: CIFAR-10 pooled to 8x8, depth 8, m = 160 .. 1280 and 2560 (1280 + flips), 1 seed,
  1,000 steps, 500 test images (sized for ~20 minutes of a busy 2-core machine).
- paper: m = 320 .. 40,960, 45,000 and 90,000 (flips), 32x32, depth 8, 5 seeds, 10^6 steps.
"""

from orchestrator.spec import CompositeSweep, Preset, Sweep
from sweeps.common import CPU_RESOURCES, paper_preset, smoke_config

SIZES = {"smoke": [40, 80, 160, 320, 640], "cpu": [160, 320, 640, 1280, 2560],
         "paper": [320 * 2 ** k for k in range(8)] + [45_000, 90_000]}
# the largest size is the one before it plus its left-right flips
FLIPPED = {p: (s[-1], s[-2]) for p, s in SIZES.items()}


def _flip_rule(p: str) -> tuple:
    big, half = FLIPPED[p]
    return ({"train_size": big}, {"train_size": half, "flip": True})


SMOKE = Preset(
    description="synthetic 8x8, depth 2, m 40..640 (flips at 640), 2 seeds, 300 steps",
    config=smoke_config(eta0_samples=40, tile_side=40),  # train_size: the axis
    width={"vec": 8, "lcn": 4}, seeds=(0, 1),
    rules=(_flip_rule("smoke"),),
    resources=CPU_RESOURCES,
    success_train_acc=0.0,  # 300 steps do not reach 95% train accuracy: every run counts
)
CPU = Preset(
    description="CIFAR-10 pooled to 8x8, depth 8, m 160..2560 (flips at 2560), 1 seed, "
                "1000 steps, 500 test images",
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, val_size=0,
                test_size=500, depth=8, w_var=2.0, b_var=0.01, max_steps=1000, eval_every=250,
                checkpoint_every=500, batch_size=40, eta0_samples=64, eta0_inits=1,
                train_eval_size=500, tile_side=160),
    width={"vec": 16, "lcn": 4}, seeds=(0,),
    rules=(_flip_rule("cpu"),),
    resources=CPU_RESOURCES,
    success_train_acc=0.0,  # 1000 steps rarely reach 95%: every finished run counts
)
PAPER = paper_preset(
    "the paper: m 320..45k and 90k (flips), 32x32, depth 8, paper widths, 1e6 steps",
    width={"vec": 128, "lcn": 32}, rules=(_flip_rule("paper"),), tile_side=320)
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)


def _part(inference: str, arch: str, transforms: list[str]) -> Sweep:
    return Sweep(name="fig4", presets=PRESETS, axes=dict(
        inference=[inference], arch=[arch], transform=transforms, train_size=SIZES["paper"]))


SWEEP = CompositeSweep(
    "fig4",
    [_part("nn_plus", "vec", ["identity", "pixel_rotation"]),  # baseline; pixel-rotated data
     _part("ntk", "vec", ["identity"]),                         # VEC_inf
     _part("nn_plus", "lcn", ["identity"])],                    # LCN_n
    description=__doc__.splitlines()[0],
    preset_axes={p: {"train_size": s} for p, s in SIZES.items()},
    analysis={"fit_first": 3, "fit_last": 3},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
