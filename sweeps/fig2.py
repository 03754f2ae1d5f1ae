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
- cpu: real CIFAR-10 average-pooled to 8x8 for every column (kernel and finite, every arch:
  like with like), class-balanced subsets (1,000 train / 1,000 test for kernels, diag_reg
  fixed in advance at 1e-6 x mean diagonal; 5,000 train / 1,000 validation for finite nets),
  depth 8. At 8x8 lap8 pools a single cell and equals gap; lap4 pools 2x2 cells.
- paper: the paper's settings (45k/5k/10k, 32x32, depth 8, paper widths, 10^6 steps); GPUs.
"""

from orchestrator.spec import Preset, Sweep
from sweeps.common import CPU_RESOURCES, PAPER_WIDTHS, paper_preset, smoke_config
from workers.vocab import ARCHS, TRANSFORMS

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
    description="CIFAR-10 at 8x8 for every column, 1,000 / 1,000 images for kernels, depth 8",
    # data_dir: the shared CIFAR-10 copy, relative to the repository (--data-dir overrides)
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, train_size=1000,
                val_size=0, test_size=1000, depth=8,
                w_var=2.0, b_var=0.01, max_steps=20000, eval_every=1000,
                checkpoint_every=1000, batch_size=40),
    width=dict(fcn=256, lcn=8, vec=32, gap=32, lap4=32, lap8=32),
    rules=(
        # Like with like: every column (kernel and finite, every arch) sees the same 8x8
        # images (4x4 average pooling of CIFAR-10). At 32x32 a gap/lap kernel is GPU
        # work; at 16x16 one transform's 400 + 400 kernel already costs ~20 CPU-minutes and its
        # NTK orderings sit inside the +-2-point noise of 400 test images, so the preset takes
        # more images at a lower resolution. At 8x8, lap8 pools one 8x8 cell: it equals gap.
        # diag_reg is fixed in advance (the regression default and docs' CPU reference point,
        # 1e-6 x mean diagonal), never tuned on the test set. Measured NTK row (about an hour
        # on the loaded 2 cores; benchmarks/README.md): Theorem 4.1's equalities hold exactly,
        # but at 8x8 gap sits below fcn on identity, unlike the paper at 32x32.
        ({"kind": "kernel"}, {"diag_reg": 1e-6}),
        # finite nets see more data (5,000 train, 1,000 validation for eta_0 and early stop)
        ({"kind": "train"}, {"train_size": 5000, "val_size": 1000}),
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
