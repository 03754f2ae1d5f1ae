"""Fig. S1 (Appendix E) of Xiao & Pennington (2022): along the rotation path tau_t.

tau_t = exp(-t A) with a random skew-symmetric 3x3 A_alpha per pixel (t = 0 is the identity,
t = 1 deep inside O(3)^d). For each width n and t on an even grid in [0, 1], VEC_n is trained
with NN+ on tau_t-transformed data from 10 initialisations (``seed``: init and data order) on
one path: App. E samples one A = (A_0 ... A_{d-1}) and averages the predictions "over 10 random
initialization" as an estimate of E VEC_n^tau_t, and S-Dist (eq. S16) is an expectation over
theta_0 only, so every VEC_n run of a preset draws the same A (``transform_seed`` =
`PATH_A_SEED`, rule `ONE_PATH`; ``--set transform_seed=K`` picks another A for all of them).
GAP_n (same widths, untransformed data, same seeds) and VEC_inf (NTK regression; O(3)^d-invariant,
so t does not matter) are the references. Every trial stores its test predictions
(``store_predictions``: <results>/figS1/predictions/<trial_id>-a<attempt>.npy) and the analysis
combines them: ensemble accuracy of VEC_n^tau_t, S-Dist(VEC_n^tau_t, GAP_n) and
S-Dist(VEC_n^tau_t, VEC_inf), the mean over initialisations taken before the distance, per A
(a store whose runs drew several A's, as this sweep's earlier per-seed A did, gets the mean
over A's of these per-A numbers, never one ensemble mixing data sets).
Paper: accuracy and the distance to GAP_n get worse with n and t; the distance to VEC_inf shrinks.

    symsweep run sweeps/figS1.py --preset smoke ; symsweep table figS1 ; symsweep plot figS1

Presets:
- smoke: synthetic 8x8, depth 2, widths 4 and 8, t in {0, 0.5, 1}, 3 seeds, 300 steps.
- cpu: CIFAR-10 pooled to 8x8, depth 8, widths 8..32, t in {0, 0.25, ..., 1}, 5 seeds,
  2,000 train / 500 test, 2,000 steps.
- paper: 45k/5k/10k at 32x32, depth 8, widths 64..512, t in {0, 0.25, ..., 1}, 10 seeds.
Every preset: one A for all its VEC_n runs (`ONE_PATH`).
"""

from orchestrator.spec import CompositeSweep, Preset, Sweep
from sweeps.common import CPU_RESOURCES, paper_preset, smoke_config

WIDTHS = {"smoke": [4, 8], "cpu": [8, 16, 32], "paper": [64, 128, 256, 512]}
TIMES = {"smoke": [0.0, 0.5, 1.0], "cpu": [0.0, 0.25, 0.5, 0.75, 1.0],
         "paper": [0.0, 0.25, 0.5, 0.75, 1.0]}


# One A for the whole ensemble (App. E, eq. S16): the path's seed, the same for every VEC_n run
# (init seeds 0..9 vary theta_0 only). Without the rule transform_seed follows the seed, a new A
# per initialisation: the ensemble would then mix ten rotated data sets.
PATH_A_SEED = 0
ONE_PATH = ({"arch": "vec", "kind": "train"}, {"transform_seed": PATH_A_SEED})

SMOKE = Preset(
    description="synthetic 8x8, depth 2, widths 4, 8, t 0/0.5/1, 3 seeds on one A, 300 steps",
    config=smoke_config(store_predictions=True),
    width={"vec": 8, "gap": 8}, seeds=(0, 1, 2), rules=(ONE_PATH,),
    resources=CPU_RESOURCES,
    success_train_acc=0.0,  # 300 steps do not reach 95% train accuracy: every run counts
)
CPU = Preset(
    description="CIFAR-10 pooled to 8x8, depth 8, widths 8..32, 5 t, 5 seeds on one A, "
                "2000 steps",
    config=dict(dataset="cifar10", data_dir="../shared/data", image_size=8, train_size=2000,
                val_size=0, test_size=500, depth=8, w_var=2.0, b_var=0.01, max_steps=2000,
                eval_every=500, checkpoint_every=1000, batch_size=40, eta0_samples=128,
                eta0_inits=1, train_eval_size=1000, store_predictions=True),
    width={"vec": 16, "gap": 16}, seeds=(0, 1, 2, 3, 4), rules=(ONE_PATH,),
    resources=CPU_RESOURCES,
    success_train_acc=0.0,
)
PAPER = paper_preset(
    "the paper: 45k/5k/10k at 32x32, depth 8, widths 64..512, 10 inits on one A, 1e6 steps",
    width={"vec": 128, "gap": 128}, seeds=tuple(range(10)), rules=(ONE_PATH,),
    store_predictions=True)
PRESETS = dict(smoke=SMOKE, cpu=CPU, paper=PAPER)

VEC_PATH = Sweep(name="figS1", presets=PRESETS, axes=dict(
    inference=["nn_plus"], arch=["vec"], transform=["identity"], width=WIDTHS["paper"],
    path_t=TIMES["paper"]))
GAP = Sweep(name="figS1", presets=PRESETS, axes=dict(
    inference=["nn_plus"], arch=["gap"], transform=["identity"], width=WIDTHS["paper"]))
VEC_INF = Sweep(name="figS1", presets=PRESETS, axes=dict(
    inference=["ntk"], arch=["vec"], transform=["identity"]))

SWEEP = CompositeSweep(
    "figS1", [VEC_PATH, GAP, VEC_INF], description=__doc__.splitlines()[0],
    preset_axes={p: {"width": WIDTHS[p], "path_t": TIMES[p]} for p in PRESETS},
)

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
