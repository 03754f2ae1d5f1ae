"""GPU readiness check of the kernel engine and the trainer; run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a machine with a GPU
    python benchmarks/gpu_check.py --cpu-dry-run --out dry.json    # every step on the CPU, tiny
    python benchmarks/gpu_check.py --quick       # seconds: a few steps, tiny, any device

Steps (each recorded in the JSON file, whose path is printed at the end):
1. devices: jax's default backend and devices, ``memory_stats()`` of the first, and the work
   item size `workers.kernels.item_entries` chose from it.
2. accuracy: for every arch, NNGP and NTK of a few image pairs (4 x 4, 32x32x3, depth 8) on the
   default device in float32 against float64 on the CPU; passes at <= 1e-5 relative.
3. kernel speed: gap, lap4, lap8 at 32x32 (each alone and the three from one propagation),
   pairs/s of a warm N x N `kernel_tile` (N = 64 on a GPU), best of 3.
4. trainer speed: steps/s of `workers.train.Trainer` (loop mode as `train()` picks it) per arch
   at the paper's widths (`workers.vocab.PAPER_WIDTHS`), depth 8, batch 40, warm, best of 3.
With ``--cpu-dry-run`` every step runs on the CPU at tiny sizes (8x8 images, N = 8, narrow
nets, a few steps) to check the script's logic; its numbers say nothing about a GPU.
``--quick`` (what ``make test`` runs) is smaller still: the dry run's sizes on jax's default
device (a GPU where there is one; on a CPU-only machine it says on stdout that the GPU side is
SKIPPED), accuracy and trainer for fcn and gap only (trainer depth 2), the gap+lap4+lap8 speed
step only, one timed call each, and the JSON into a temporary folder unless ``--out`` is given.
Exit status: 0 when every accuracy check passes, 1 otherwise, 2 for bad use (no GPU without
--cpu-dry-run).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOL = 1e-5
ARCHS = ("fcn", "vec", "lcn", "gap", "lap4", "lap8")


def best_of(fn, reps: int = 3) -> float:
    """Best wall time (s) of reps calls of fn after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every step on the CPU at tiny sizes (tests the script only)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: tiny sizes, fcn and gap, on the default device (a CPU-only "
                         "machine skips the GPU side and says so)")
    ap.add_argument("--out", default=None,
                    help="JSON results file (default gpu_check.json; --quick: a temporary "
                         "folder's)")
    args = ap.parse_args()
    if args.quick and args.cpu_dry_run:
        ap.error("--quick and --cpu-dry-run: pick one")
    if args.quick and not args.out:
        with tempfile.TemporaryDirectory(prefix="gpu-check-quick-") as tmp:
            return check(args, f"{tmp}/gpu_check.json")
    return check(args, args.out or "gpu_check.json")


def check(args: argparse.Namespace, out_file: str) -> int:
    """Run the steps of the module docstring; the JSON report goes to ``out_file``."""
    import jax

    from orchestrator.fsio import write_atomic
    from workers.kernels import item_entries, kernel_tile

    quick = args.quick
    dry = args.cpu_dry_run or quick  # the dry run's sizes
    backend = jax.default_backend()
    if quick and backend == "cpu":
        print("SKIPPED the GPU side: jax sees no GPU (default backend 'cpu'); every step runs "
              "on the CPU at tiny sizes, checking the script and symsweep's kernels and "
              "trainer, not a GPU", flush=True)
    if not dry and backend == "cpu":
        print("gpu_check: jax sees no GPU (default backend 'cpu'); install the gpu extra "
              "(benchmarks/gpu_check.sh does) on a machine with a CUDA GPU, or pass "
              "--cpu-dry-run to test the script on the CPU", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    try:
        mem = dev.memory_stats()
    except Exception as err:  # recorded in the JSON, not hidden
        mem = {"error": f"{type(err).__name__}: {err}"}
    size, n_acc, n_speed = (8, 4, 8) if dry else (32, 4, 64)
    report: dict = {
        "dry_run": dry, "quick": quick, "backend": backend,
        "devices": [str(d) for d in jax.devices()],
        "device_kind": dev.device_kind, "memory_stats": mem, "item_entries": item_entries(),
        "jax": jax.__version__, "host": platform.node(), "image_size": size,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out = Path(out_file).resolve()

    def save() -> None:
        import pyarrow.fs as pafs
        write_atomic(pafs.LocalFileSystem(), str(out),
                     json.dumps(report, indent=1, default=str).encode())

    rng = np.random.default_rng(2022)
    x = rng.standard_normal((max(n_acc, n_speed), size, size, 3)).astype(np.float32)

    # 2. accuracy: device float32 vs CPU float64
    archs_run = ("fcn", "gap") if quick else ARCHS
    reps = 1 if quick else 3
    acc = {}
    for arch in archs_run:
        got = kernel_tile([arch], x[:n_acc], x[:n_acc])[arch]
        with jax.default_device(cpu):
            ref = kernel_tile([arch], x[:n_acc], x[:n_acc], dtype=np.float64)[arch]
        err = max(float(np.max(np.abs(got[k] - ref[k]) / np.abs(ref[k])))
                  for k in ("nngp", "ntk"))
        acc[arch] = {"max_rel_err": err, "ok": err <= TOL, "pairs": n_acc * n_acc}
        print(f"accuracy {arch}: max rel err {err:.2e} vs float64 CPU "
              f"({'ok' if err <= TOL else 'FAIL'})", flush=True)
    report["accuracy"] = acc
    report["accuracy_tolerance"] = TOL
    save()

    # 3. gap/lap speed
    speed = {}
    xs = x[:n_speed]
    speed_sets = [["gap", "lap4", "lap8"]]
    if not quick:
        speed_sets = [["gap"], ["lap4"], ["lap8"], *speed_sets]
    for archs in speed_sets:
        s = best_of(lambda a=archs: kernel_tile(a, xs, xs), reps)
        speed["+".join(archs)] = {"pairs_per_s": n_speed * n_speed / s, "pairs": n_speed**2,
                                  "seconds": s}
        print(f"kernel {'+'.join(archs)} {size}x{size}: {n_speed**2 / s:.4g} pairs/s",
              flush=True)
    report["kernel_speed"] = speed
    save()

    # 4. trainer steps/s at paper widths
    from workers.models import init_params, make_model
    from workers.train import Trainer
    from workers.vocab import PAPER_WIDTHS

    steps = {a: (3 if dry else (2000 if a == "fcn" else 200)) for a in ARCHS}
    depth = 2 if quick else 8
    train = {}
    xt = rng.standard_normal((400, size, size, 3)).astype(np.float32)
    yt = (np.eye(10, dtype=np.float32)[rng.integers(0, 10, 400)] - 0.1).astype(np.float32)
    for arch in archs_run:
        width = 4 if dry else PAPER_WIDTHS[arch]
        model = make_model(arch, width, depth=depth)
        params = init_params(model, 0, xt.shape[1:])
        tr = Trainer(model, xt, yt, lr=1e-3, batch_size=40, momentum=0.9, l2=0.0, seed=0,
                     diverge_loss=float("inf"))

        def run(tr=tr, params=params, n=steps[arch]):
            st, _ = tr.run(tr.init_state(params), 0, n)
            jax.tree_util.tree_map(lambda a: a.block_until_ready(), st)

        s = best_of(run, reps)
        train[arch] = {"width": width, "depth": depth, "steps": steps[arch], "loop": tr.loop,
                       "steps_per_s": steps[arch] / s}
        print(f"trainer {arch} width {width}: {steps[arch] / s:.4g} steps/s ({tr.loop} loop)",
              flush=True)
    report["trainer_speed"] = train
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report["all_accuracy_ok"] = all(v["ok"] for v in acc.values())
    save()
    print(f"gpu_check: results in {out}")
    return 0 if report["all_accuracy_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
