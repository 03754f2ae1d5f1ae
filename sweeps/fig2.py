"""Fig. 2 of Xiao & Pennington (2022): inference x architecture x transformed data.

3 x 6 x 5 = 90 cells: NTK (infinite-width kernel regression, one run per cell), NN and NN+
(finite networks, SGD; NN+ = 8x learning rate + L2 1e-7), five seeds per finite cell; the seed
is both the initialisation and the draw of the transform tau. Kernel cells that Theorem 4.1
makes identical are computed once (``--no-dedupe`` to compute all).

    python sweeps/fig2.py --preset smoke          # == symsweep run sweeps/fig2.py --preset smoke
    symsweep run sweeps/fig2.py --preset cpu --data-dir ../shared/data
    ray submit cluster/gpu.yaml sweeps/fig2.py -- --preset paper

Presets:
- smoke: synthetic 8x8 images, depth 2, narrow nets, 300 SGD steps (eta_0 from 64 points,
  1 init), 256 train / 256 test images; the whole grid finishes in minutes on 2 CPU cores.
  Success threshold lowered to 0 (nets do not reach 95% in 300 steps): every completed run
  counts.
- cpu: real CIFAR-10, class-balanced subsets (500 train / 500 test for kernels; 5,000 train
  for finite nets), depth 8; gap/lap kernels on images average-pooled to 8x8 (their
  full-covariance kernels are GPU work at 32x32), fcn/lcn/vec at 32x32.
- paper: the paper's settings (45k/5k/10k, 32x32, depth 8, paper widths, 10^6 steps); GPUs.
"""

from orchestrator.spec import Preset, Sweep
from sweeps.common import CPU_RESOURCES, PAPER_WIDTHS, paper_preset, smoke_config
from workers.vocab import ARCHS, FULL_COV_ARCHS, TRANSFORMS

SMOKE = Preset(
    description="synthetic 8x8, depth 2, narrow nets, 300 steps; minutes on 2 cores",
    config=smoke_config(val_size=64, checkpoint_every=200),
    rules=(({"kind": "kernel"}, {"val_size": 0}),),  # Fig. 2 needs no kernel validation
    width=dict(fcn=64, lcn=4, vec=8, gap=8, lap4=8, lap8=8),
    seeds=(0, 1, 2, 3, 4),
    resources=CPU_RESOURCES,
    success_train_acc=0.0,
    max_failures=2,
)

CPU = Preset(
    description="CIFAR-10 subsets, depth 8; gap/lap kernels at 8x8, the rest at 32x32",
    # data_dir: the shared CIFAR-10 copy, relative to the repository (--data-dir overrides)
    config=dict(dataset="cifar10", data_dir="../shared/data", train_size=500, val_size=0,
                test_size=500, depth=8,
                w_var=2.0, b_var=0.01, max_steps=20000, eval_every=1000,
                checkpoint_every=1000, batch_size=40),
    width=dict(fcn=256, lcn=8, vec=32, gap=32, lap4=32, lap8=32),
    rules=(
        # finite nets see more data; kernels stay at 500 (N^2 pairs: a 500 + 500 gap kernel at
        # 8x8 is ~375k pairs, minutes per core; vec at 32x32 likewise)
        ({"kind": "train"}, {"train_size": 5000, "val_size": 1000}),
        ({"arch": list(FULL_COV_ARCHS)}, {"image_size": 8}),
    ),
    resources=CPU_RESOURCES,
    success_train_acc=0.95,
    max_failures=2,
)

PAPER = paper_preset(
    "the paper: 45k/5k/10k CIFAR-10 at 32x32, depth 8, paper widths, 1e6 steps",
    width=PAPER_WIDTHS)

SWEEP = Sweep(
    name="fig2",
    description=__doc__.splitlines()[0],
    axes=dict(inference=["ntk", "nn", "nn_plus"], arch=list(ARCHS), transform=list(TRANSFORMS)),
    presets=dict(smoke=SMOKE, cpu=CPU, paper=PAPER),
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
