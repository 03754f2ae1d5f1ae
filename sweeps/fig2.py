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
- cpu: real CIFAR-10 average-pooled to 16x16, the same 500 training and 500 test images
  (class-balanced) for every column, kernel and finite; depth 8; kernels' diag_reg chosen on
  250 validation images, with the fixed 1e-6 x mean diagonal reported beside it; finite nets
  one seed, at most 2,000 SGD steps. About 5 h on 2 cores (kernels ~50 min, the 60 finite
  trials ~4 h; measured, docs/results.md "Fig. 2"); the kernel rows alone (--only
  inference=ntk,nngp) under an hour. At this size gap > vec > fcn on clean data does not
  show yet and the convolutional nets stop at 2,000 steps before fitting their training set.
- paper: the paper's settings (45k/5k/10k, 32x32, depth 8, paper widths, 10^6 steps); GPUs.
"""

from orchestrator.spec import Preset, Sweep
from sweeps.common import (
    CPU_RESOURCES,
    PAPER_WIDTHS,
    diag_reg_on_validation,
    paper_preset,
    smoke_config,
)
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
    description="CIFAR-10 at 16x16, the same 500 / 500 images for every column, depth 8; "
                "about 5 h on 2 cores (kernels ~50 min, finite nets 1 seed ~4 h)",
    # data_dir: the shared CIFAR-10 copy, relative to the repository (--data-dir overrides)
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=16, train_size=500,
                val_size=0, test_size=500, depth=8,
                w_var=2.0, b_var=0.01, max_steps=2000, eval_every=500,
                checkpoint_every=500, batch_size=40),
    width=dict(fcn=256, lcn=8, vec=32, gap=32, lap4=32, lap8=32),
    rules=(
        # Chosen from the measured trade-off table in docs/results.md ("Fig. 2"): at 8x8 one
        # pooling window is the whole image and gap fell below fcn; 16x16 is the smallest size
        # with spatial structure left, and a gap kernel there costs ~10 min per transform at
        # 500 + 500 images on 2 cores (four transforms differ for gap under Theorem 4.1), so
        # 500 is what fits a kernel row in an hour; m = 1,000 (where the pooled kernels pull
        # ahead) would cost four times that. Every column (kernel and finite, every arch)
        # trains on the same 500 images and is tested on the same 500 (like with like:
        # NTK -> NN -> NN+).
        # Kernel trials: diag_reg chosen on 250 validation images (a separate split of the
        # CIFAR-10 training set) over DIAG_REG_GRID; the row keeps the fixed-regulariser
        # numbers (diag_reg 1e-6 x mean diagonal, the t = infinity result) beside it.
        ({"kind": "kernel"}, {"diag_reg": 1e-6}),
        diag_reg_on_validation(250),
        # Finite nets: no validation split (workers/train.py estimates eta_0 and stops early on
        # the training data; a validation split would only be recorded), one seed.
    ),
    seeds=(0,),
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
