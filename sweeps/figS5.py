"""Fig. S5 of Xiao & Pennington (2022): Gaussian vs uniform first-layer initialisation.

The arch x transform grid of Fig. 2 for `nn`, once with the i.i.d. Gaussian first layer the
theorem assumes and once with a uniform first layer of equal variance (omega ~ U[-sqrt 3,
sqrt 3]; ``first_layer_init``). Theorem 4.1's coupling argument needs the rotated first-layer
weights to be distributed like the original ones, which the uniform init breaks; the paper
finds little change in accuracy. `symsweep table figS5` prints both and their difference.

    symsweep run sweeps/figS5.py --preset smoke ; symsweep table figS5 ; symsweep plot figS5

Presets:
- smoke: synthetic 8x8, depth 2, fcn/lcn/vec/gap x identity/pixel/global rotation, 2 seeds,
  300 steps.
- cpu: CIFAR-10 pooled to 8x8, depth 8, all archs and transforms, 2 seeds, 2,000 train,
  3,000 steps.
- paper: 45k/5k/10k at 32x32, depth 8, paper widths, 5 seeds, 10^6 steps.
"""

from orchestrator.spec import CompositeSweep, Preset, Sweep
from sweeps.common import GPU_RESOURCES, PAPER_WIDTHS, paper_preset, smoke_config
from workers.vocab import ARCHS, FIRST_LAYER_INITS, TRANSFORMS

SMOKE = Preset(
    description="synthetic 8x8, depth 2, 4 archs x 3 transforms, 2 seeds, 300 steps",
    config=smoke_config(),
    width=dict(fcn=64, lcn=4, vec=8, gap=8, lap4=8, lap8=8), seeds=(0, 1),
    resources=dict(train=dict(cpu=1)), success_train_acc=0.0,
)
CPU = Preset(
    description="CIFAR-10 pooled to 8x8, depth 8, all cells, 2 seeds, 2000 train, 3000 steps",
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, train_size=2000,
                val_size=0, test_size=500, depth=8, w_var=2.0, b_var=0.01, max_steps=3000,
                eval_every=500, checkpoint_every=1000, batch_size=40, eta0_samples=128,
                eta0_inits=1, train_eval_size=1000),
    width=dict(fcn=256, lcn=4, vec=16, gap=16, lap4=16, lap8=16), seeds=(0, 1),
    resources=dict(train=dict(cpu=1)), success_train_acc=0.0,
)
PAPER = paper_preset(
    "the paper: 45k/5k/10k at 32x32, depth 8, paper widths, 5 seeds, 1e6 steps",
    width=PAPER_WIDTHS, resources={"train": GPU_RESOURCES["train"]})
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

GRID = Sweep(name="figS5", presets=PRESETS, axes=dict(
    inference=["nn"], arch=list(ARCHS), transform=list(TRANSFORMS),
    first_layer_init=list(FIRST_LAYER_INITS)))

SWEEP = CompositeSweep(
    "figS5", [GRID], description=__doc__.splitlines()[0],
    preset_axes={"smoke": {"arch": ["fcn", "lcn", "vec", "gap"],
                           "transform": ["identity", "pixel_rotation", "global_rotation"]}},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
