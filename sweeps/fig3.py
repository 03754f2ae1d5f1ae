"""Fig. 3 of Xiao & Pennington (2022): VEC_n accuracy against width n, with the VEC_inf level.

Finite VEC_n nets (NN and NN+) over dyadic widths on data transformed by `shared_rotation`
(VEC_n is invariant to it: the curve is the untransformed one) and `pixel_rotation` (a spurious
O(3)^d symmetry for VEC_n), several seeds (init and tau) per cell; plus the infinite-width
`ntk` level (VEC_inf is O(3)^d-invariant, so both transforms share one kernel computation).
Paper: under shared rotation accuracy peaks near n = 2^6 (NN) / 2^7 (NN+) then falls toward the
NTK level (67%); under pixel rotation it rises monotonically toward it.

    symsweep run sweeps/fig3.py --preset smoke ; symsweep table fig3 ; symsweep plot fig3

Presets:
- smoke: synthetic 8x8, depth 2, widths 2..16, 2 seeds, 300 steps; minutes on 2 CPU cores.
- cpu: CIFAR-10 average-pooled to 8x8, depth 8, widths 2^2..2^6, 3 seeds, 2,000 train / 500
  test images, 3,000 steps; the kernel on the same 2,000 / 500 images. About 100 minutes on a
  busy 2-core machine (measured 2026-11-27); the nets are still undertrained at 3,000 steps.
- paper: 45k/5k/10k at 32x32, depth 8, widths 2^3..2^10, 5 seeds, 10^6 steps; GPUs.
"""

from orchestrator.spec import CompositeSweep, Preset, Sweep
from sweeps.common import CPU_RESOURCES, paper_preset, smoke_config
from workers.vocab import FINITE_INFERENCES

TRANSFORMS = ["shared_rotation", "pixel_rotation"]
WIDTHS = {"smoke": [2, 4, 8, 16], "cpu": [4, 8, 16, 32, 64],
          "paper": [8, 16, 32, 64, 128, 256, 512, 1024]}

SMOKE = Preset(
    description="synthetic 8x8, depth 2, widths 2..16, 2 seeds, 300 steps; minutes on 2 cores",
    config=smoke_config(),
    width={"vec": 8}, seeds=(0, 1), resources=CPU_RESOURCES,
    success_train_acc=0.0,  # 300 steps do not reach 95% train accuracy: every run counts
)
CPU = Preset(
    description="CIFAR-10 pooled to 8x8, depth 8, widths 4..64, 3 seeds, 2000/500, 3000 steps",
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, train_size=2000,
                val_size=0, test_size=500, depth=8, w_var=2.0, b_var=0.01, max_steps=3000,
                eval_every=500, checkpoint_every=1000, batch_size=40, eta0_samples=128,
                eta0_inits=1, train_eval_size=1000),
    width={"vec": 16}, seeds=(0, 1, 2), resources=CPU_RESOURCES,
    success_train_acc=0.0,  # 3000 steps (60 epochs) rarely reach 95%: every finished run counts
)
PAPER = paper_preset(
    "the paper: 45k/5k/10k CIFAR-10 at 32x32, depth 8, widths 8..1024, 1e6 steps",
    width={"vec": 128})
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

FINITE = Sweep(name="fig3", presets=PRESETS, axes=dict(
    inference=list(FINITE_INFERENCES), arch=["vec"], transform=TRANSFORMS, width=WIDTHS["paper"]))
KERNEL = Sweep(name="fig3", presets=PRESETS, axes=dict(
    inference=["ntk"], arch=["vec"], transform=TRANSFORMS))

SWEEP = CompositeSweep("fig3", [FINITE, KERNEL], description=__doc__.splitlines()[0],
                       preset_axes={p: {"width": w} for p, w in WIDTHS.items()})

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
