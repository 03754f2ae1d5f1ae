"""Benchmark: symsweep's infinite-width kernels against neural-tangents 0.6.5, side by side.

    .venv/bin/python benchmarks/kernels.py [--quick] [--no-readme]

Both sides get identical inputs (standard-normal 32x32x3 images, fixed seed, float32), depth 8,
w_var = 2, b_var = 0.01, NNGP + NTK together, warm (compile time reported separately).
neural-tangents runs in its reference environment (``NT_REF_PYTHON``, default
/tmp/nt-ref/bin/python; built by ../shared/tools/nt-reference-env.sh) as a subprocess, with
``nt.batch`` over the ``stax`` kernel function. Every measurement runs in its own process, so
"peak MB" is that process's peak resident memory above its state before the kernel call
(compilation included). Speed-ups are given on wall-clock time and on process CPU time (user +
system, all threads): on a shared, oversubscribed machine the CPU-time ratio is the steadier
one. Accuracy: both float32 results are compared with symsweep's float64 kernels (which match
neural-tangents' float64 to <= 1e-7, see tests/test_kernels_fixtures.py) on up to 16 x 16 pairs;
neural-tangents' float32 error is largest on image-with-itself entries (rho = 1).
For gap/lap, neural-tangents gets only 4 x 4 pairs (it manages under
1 pair/s) and symsweep 8 x 8 whose first 4 x 4 are the same pairs; the two results are
evaluated on those pairs.

GFLOP/s counts the recursion's arithmetic, the same count for both sides: per layer and per
covariance entry kept (1 for fcn, H*W for vec/lcn, (H*W)^2 for gap/lap) about 64 flops
(3x3 window on NNGP and NTK, affine maps, the ReLU arc-cosine step), plus the input
covariance (2 flops per channel per entry; for fcn 2 * H * W * C). The machine's peak is
measured as a float32 numpy matrix multiply.

Writes a markdown table to stdout and into the "Kernels" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = os.environ.get("NT_REF_PYTHON", "/tmp/nt-ref/bin/python")
NT_TOOLS = os.environ.get("NTREF_TOOLS", str(ROOT.parent / "shared" / "tools"))
DEPTH, W_VAR, B_VAR = 8, 2.0, 0.01
FLOPS_PER_ENTRY_LAYER = 64
SHAPE = (32, 32, 3)

# Runs inside a subprocess of either environment. argv: side archs n1 n2 images.npy reps
WORKER = textwrap.dedent(r'''
import json, resource, sys, time
import numpy as np
side, archs, n1, n2, path, reps = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
x = np.load(path).astype(np.float32)
x1, x2 = x[:n1], x[:n2]
DEPTH, W_VAR, B_VAR = 8, 2.0, 0.01

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

if side == "nt":
    sys.path.insert(0, sys.argv[7])
    from ntref import nt, stax
    import jax
    w_std, b_std = W_VAR ** 0.5, B_VAR ** 0.5
    def model(arch):
        if arch == "fcn":
            layers = [stax.Flatten()]
            for _ in range(DEPTH):
                layers += [stax.Dense(512, W_std=w_std, b_std=b_std), stax.Relu()]
            return stax.serial(*layers, stax.Dense(10, W_std=w_std, b_std=b_std))
        conv = stax.ConvLocal if arch == "lcn" else stax.Conv
        layers = []
        for _ in range(DEPTH):
            layers += [conv(64, (3, 3), padding="CIRCULAR", W_std=w_std, b_std=b_std),
                       stax.Relu()]
        head = {"vec": [stax.Flatten()], "lcn": [stax.Flatten()], "gap": [stax.GlobalAvgPool()],
                "lap4": [stax.AvgPool((4, 4), (4, 4)), stax.Flatten()],
                "lap8": [stax.AvgPool((8, 8), (8, 8)), stax.Flatten()]}[arch]
        return stax.serial(*layers, *head, stax.Dense(10, W_std=w_std, b_std=b_std))
    fns = [nt.batch(model(a)[2], batch_size=min(n1, n2, 64), store_on_device=False)
           for a in archs]
    def run():
        out = {}
        for a, fn in zip(archs, fns):
            k = fn(x1, x2, ("nngp", "ntk"))
            out[a] = [np.asarray(k.nngp), np.asarray(k.ntk)]
        return out
else:
    from workers.kernels import kernel_tile
    def run():
        r = kernel_tile(archs, x1, x2, depth=DEPTH, w_var=W_VAR, b_var=B_VAR)
        return {a: [r[a]["nngp"], r[a]["ntk"]] for a in archs}

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

base = rss_mb()
t0 = time.perf_counter(); out = run(); first = time.perf_counter() - t0
times, cpus = [], []
for _ in range(reps):
    t0, c0 = time.perf_counter(), cpu()
    out = run()
    times.append(time.perf_counter() - t0); cpus.append(cpu() - c0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
arrays = {f"{a}_{i}": v[i] for a, v in out.items() for i in range(2)}
if side == "ours" and len(sys.argv) > 7 and int(sys.argv[7]) > 0:
    m = int(sys.argv[7])
    r = kernel_tile(archs, x[:m], x[:m], depth=DEPTH, w_var=W_VAR, b_var=B_VAR, dtype=np.float64)
    arrays.update({f"{a}_{i}_f64": r[a][k] for a in archs for i, k in enumerate(("nngp", "ntk"))})
np.savez(path + f".{side}.{'_'.join(archs)}.npz", **arrays)
print("RESULT", json.dumps({"first_s": first, "best_s": min(times), "cpu_s": min(cpus),
                            "peak_mb": peak - base}))
''')


def _run(side: str, archs: list[str], n1: int, n2: int, images: str, reps: int,
         ref: int = 0) -> dict:
    py = NT_PYTHON if side == "nt" else sys.executable
    cmd = [py, "-c", WORKER, side, ",".join(archs), str(n1), str(n2), images, str(reps)]
    cmd.append(NT_TOOLS if side == "nt" else str(ref))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {archs} failed:\n{p.stderr[-3000:]}")
    res = json.loads(lines[-1][7:])
    res.update(side=side, archs=archs, pairs=n1 * n2)
    res["pairs_per_s"] = n1 * n2 / res["best_s"]
    res["pairs_per_cpu_s"] = n1 * n2 / res["cpu_s"]
    res["file"] = images + f".{side}.{'_'.join(archs)}.npz"
    return res


def flops_per_pair(arch: str) -> float:
    h, w, c = SHAPE
    if arch == "fcn":
        return 2 * h * w * c + DEPTH * FLOPS_PER_ENTRY_LAYER
    entries = h * w if arch in ("vec", "lcn") else (h * w) ** 2
    return entries * (DEPTH * FLOPS_PER_ENTRY_LAYER + 2 * c)


def machine_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description="symsweep vs neural-tangents kernel benchmark")
    ap.add_argument("--quick", action="store_true", help="smaller pair counts (smoke run)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README")
    args = ap.parse_args()
    q = args.quick
    # (arch, symsweep n, nt n): square blocks n x n of the same images
    plan = [("fcn", 256 if q else 512, 256 if q else 512),
            ("vec", 32 if q else 64, 32 if q else 64),
            ("lcn", 32 if q else 64, 32 if q else 64),
            ("gap", 4 if q else 8, 4),
            ("lap4", 4 if q else 8, 4),
            ("lap8", 4 if q else 8, 4)]
    reps = 1 if q else 2
    rng = np.random.default_rng(2022)
    x = rng.standard_normal((1024, *SHAPE)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="symsweep-bench-")
    images = os.path.join(tmp, "images.npy")
    np.save(images, x)

    rows = []
    for arch, n_ours, n_nt in plan:
        m = min(n_ours, n_nt, 16)
        ours = _run("ours", [arch], n_ours, n_ours, images, reps, ref=m)
        ref = _run("nt", [arch], n_nt, n_nt, images, reps if arch in ("fcn", "vec", "lcn") else 1)
        a, b = np.load(ours["file"]), np.load(ref["file"])

        def err(d, arch=arch, a=a, m=m):
            return max(float(np.max(np.abs(d[f"{arch}_{i}"][:m, :m] - a[f"{arch}_{i}_f64"])
                                    / np.abs(a[f"{arch}_{i}_f64"]))) for i in range(2))

        rows.append((arch, ours, ref, err(a), err(b)))
        print(f"{arch}: symsweep {ours['pairs_per_s']:.4g} pairs/s, nt {ref['pairs_per_s']:.4g}"
              f" pairs/s; error vs float64 {err(a):.1e} / {err(b):.1e}", file=sys.stderr,
              flush=True)

    n_multi = 4 if q else 8
    multi = _run("ours", ["vec", "gap", "lap4", "lap8"], n_multi, n_multi, images, reps)
    by_arch = {r[0]: r for r in rows}
    ours_sep_s = sum(1 / by_arch[a][1]["pairs_per_s"] for a in ("vec", "gap", "lap4", "lap8"))
    nt_sep_s = sum(1 / by_arch[a][2]["pairs_per_s"] for a in ("vec", "gap", "lap4", "lap8"))
    ours_sep_cpu = sum(1 / by_arch[a][1]["pairs_per_cpu_s"] for a in ("vec", "gap", "lap4", "lap8"))
    nt_sep_cpu = sum(1 / by_arch[a][2]["pairs_per_cpu_s"] for a in ("vec", "gap", "lap4", "lap8"))
    peak = machine_gflops()

    lines = [
        "`.venv/bin/python benchmarks/kernels.py` (about 15-30 minutes here, most of it "
        "neural-tangents on gap/lap; `--quick` for a smoke run). Method and flop count: see the "
        "script's docstring.",
        "",
        f"Depth {DEPTH}, 32x32x3, float32, NNGP + NTK, warm; "
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{os.cpu_count()} CPU cores (shared machine: other jobs were running, so absolute "
        "numbers are noisy; each pair of numbers was measured back to back). "
        f"Machine peak (float32 numpy matmul): {peak:.0f} GFLOP/s.",
        "",
        "| arch | symsweep pairs/s | nt pairs/s | speed-up (wall) | speed-up (CPU time) "
        "| symsweep GFLOP/s | nt GFLOP/s | peak MB (symsweep / nt) | compile s (symsweep / nt) "
        "| pairs (symsweep / nt) | max rel err vs float64 (symsweep / nt) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, ours, ref, e_ours, e_nt in rows:
        f = flops_per_pair(arch) / 1e9
        lines.append(
            f"| {arch} | {ours['pairs_per_s']:.4g} | {ref['pairs_per_s']:.4g} | "
            f"{ours['pairs_per_s'] / ref['pairs_per_s']:.1f}x | "
            f"{ours['pairs_per_cpu_s'] / ref['pairs_per_cpu_s']:.1f}x | "
            f"{ours['pairs_per_s'] * f:.3g} | {ref['pairs_per_s'] * f:.3g} | "
            f"{ours['peak_mb']:.0f} / {ref['peak_mb']:.0f} | "
            f"{max(ours['first_s'] - ours['best_s'], 0):.1f} / "
            f"{max(ref['first_s'] - ref['best_s'], 0):.1f} | "
            f"{ours['pairs']} / {ref['pairs']} | {e_ours:.1e} / {e_nt:.1e} |")
    lines += [
        "",
        "Multi-readout: one symsweep call computing vec + gap + lap4 + lap8 from one "
        "propagation, against the four separate computations.",
        "",
        "| | seconds per pair (wall) | speed-up vs nt four separate (wall / CPU time) |",
        "|---|---|---|",
        f"| symsweep, one call [vec, gap, lap4, lap8] | {1 / multi['pairs_per_s']:.3g} | "
        f"{nt_sep_s * multi['pairs_per_s']:.1f}x / "
        f"{nt_sep_cpu * multi['pairs_per_cpu_s']:.1f}x |",
        f"| symsweep, four separate calls | {ours_sep_s:.3g} | {nt_sep_s / ours_sep_s:.1f}x / "
        f"{nt_sep_cpu / ours_sep_cpu:.1f}x |",
        f"| neural-tangents, four separate | {nt_sep_s:.3g} | 1.0x |",
        "",
        f"symsweep multi-readout call: peak {multi['peak_mb']:.0f} MB, "
        f"{multi['pairs']} pairs.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_readme:
        readme = ROOT / "benchmarks" / "README.md"
        text = readme.read_text() if readme.exists() else "# Benchmarks\n"
        start, end = "<!-- kernels:start -->", "<!-- kernels:end -->"
        block = f"{start}\n{table}\n{end}"
        if start in text and end in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n## Kernels (`benchmarks/kernels.py`)\n\n" + block + "\n"
        readme.write_text(text)


if __name__ == "__main__":
    main()
