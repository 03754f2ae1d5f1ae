"""Roofline benchmark: symsweep's infinite-width kernels against neural-tangents 0.6.5 and the
machine's own peak, on the same work, measured in one run.

    python benchmarks/kernels.py                        # every arch at 32x32 and 16x16
    python benchmarks/kernels.py --archs gap,vec,fcn --size 32   # the quoted table (~20 min)
    python benchmarks/kernels.py --size 16 --kinds offdiag       # 16x16, off-diagonal only
    python benchmarks/kernels.py --quick                # seconds: 8x8, fcn and gap, tiny blocks
    python benchmarks/kernels.py --ideas [--size 32]    # engine variants, interleaved

What runs. For each (arch, image size, block kind) one persistent worker process per side
(symsweep in this environment, neural-tangents in its reference environment ``NT_REF_PYTHON``,
default /tmp/nt-ref/bin/python, built by ../shared/tools/nt-reference-env.sh) loads the same
inputs (standard-normal HxWx3 images, fixed seed, float32) and computes the **same n x n block**
(`SIZES`): ``offdiag``, n images against n others (a trial's test-train block), or ``sym``, n
images against themselves (its train-train block). Each side batches the block as it would
for real: symsweep through `workers.kernels.kernel_matrices`, which plans its own tiles;
neural-tangents through ``nt.batch`` at each batch size in `SIZES` (divisors of n), and the
speed-up is against its best one. After a warm-up call per batch size (compiles), the driver
asks for one timed repetition of each, alternately (symsweep, nt at each batch size, symsweep,
...): all see the same machine load. Best of the repetitions is reported, with process CPU time
(user + system, all threads) beside wall time, and ``/proc/loadavg`` is printed before and
after. Depth 8, w_var 2, b_var 0.01, NNGP + NTK together, one arch per call (symsweep's gap/lap
cell computes gap + lap4 + lap8 together, see `workers.kernel_trial`; here each arch is timed
alone so that both sides do the same work). Accuracy: both float32 results against symsweep's
float64 kernels (equal to neural-tangents' float64 to <= 1e-7, tests/test_kernels_fixtures.py)
on the first m x m pairs of the block (m <= 16).

The machine's peak, measured in the same run with as many threads as the engine uses
(`workers.kernels.host_threads`):
* multiply-add peak: a jitted micro-kernel, 16 independent chains of 32 multiply-adds per
  element of an L2-resident float32 array in one fused loop, 2 flops per multiply-add (whether
  XLA emits FMA instructions or not: it is the best XLA-generated elementwise code reaches);
* copy bandwidth: ``np.copyto`` of a 256 MiB float32 array, split over the threads, counted as
  read + write (2 x 256 MiB per copy).

The count per pair (the same for both sides; it is the algorithm's arithmetic, not either
implementation's). E = covariance entries per pair per layer: 1 (fcn), H*W (vec, lcn: the
per-pixel covariance), (H*W)^2 (gap, lap4, lap8: the full covariance). Per entry per layer:

    3x3 window on K and Theta, separable: 2 arrays x 2 passes x 2 adds        8
    affine maps K <- w K / 9 + b, Theta <- w Theta / 9 + K (FMA = 2)         4
    ReLU step: rho = K (1/s1)(1/s2) 2, clip 2, same-image select 1, |rho| 1,
      1 - r 1, sqrt 1, P(r) degree-7 Horner 14, arccos = s P 1, pi - theta
      select 2, R(r) Horner 14, s u R 2, + pi max(rho, 0) 3,
      K_out = (s1 s2) J1 c 3, Theta_out = Theta (pi - theta) c 2             49
                                                                          ---- 61
(fcn has no window: 53). Plus the input covariance, 2 C flops per entry (fcn: 2 H W C), and the
readout, 2 flops per entry. So FLOP/pair = E (2 C + 61 L + 2) with L = 8 layers.
Bytes per pair: the one-pass-per-layer model, each layer reading K and Theta and writing them
back, 4 numbers x 4 bytes per entry per layer (16 E L bytes; plus the two images for fcn). An
engine that keeps its work items in cache moves less than this through DRAM, so bytes/s above
the copy bandwidth means the working set stayed in cache, not a measurement error.

``--ideas`` times variants of the symsweep engine against each other, interleaved in one
process, on the full-covariance path (gap): the ReLU step with a per-entry zero-variance select
(``relu_kernels``) against precomputed inverse standard deviations, the 3x3 circular window as
rolls fused into the layer's loop against materialised padding and nine slices, one thread
against `host_threads()`, and work items of 2^16 to 2^20 numbers per array. It patches the
module's internals and clears jax's caches between variants.

Writes the markdown tables to stdout and (full runs, without --no-readme) into the "Kernels"
section of benchmarks/README.md.

``--quick`` (what ``make test`` runs, tests/test_benchmarks_quick.py) is the same harness at
tiny sizes: 8x8 images, fcn on an off-diagonal and gap on a symmetric block (both kinds, the
dense and the full-covariance path) of a few pairs, 1 repetition, a small copy for the
bandwidth. It never writes the README. Without the
neural-tangents environment it times symsweep's side alone and says so on stderr; its
numbers say nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = os.environ.get("NT_REF_PYTHON", "/tmp/nt-ref/bin/python")
NT_TOOLS = os.environ.get("NTREF_TOOLS", str(ROOT.parent / "shared" / "tools"))
DEPTH, W_VAR, B_VAR, CHANNELS = 8, 2.0, 0.01, 3
ALL_ARCHS = ("fcn", "vec", "lcn", "gap", "lap4", "lap8")
# flops per covariance entry per layer (see the docstring's table)
FLOPS_WINDOW, FLOPS_AFFINE, FLOPS_RELU = 8, 4, 49
FLOPS_INPUT_PER_CHANNEL, FLOPS_READOUT = 2, 2
BYTES_PER_ENTRY_LAYER = 16
# Goals of issue 14 (symsweep / neural-tangents, 32x32)
GOALS = {"fcn": 1.5, "vec": 5.0, "lcn": 5.0, "gap": 30.0, "lap4": 30.0, "lap8": 30.0}

# A persistent worker: reads one command per line on stdin ("run B", "save F M", "quit"),
# answers one JSON line on stdout. argv: side arch n size kind images.npy batches [nt_tools].
# kind "offdiag": x1 = images[:n], x2 = images[n:2n] (n x n pairs of distinct images, the
# test-train block of a trial); kind "sym": x1 = images[:n] with itself (the train-train
# block: symsweep computes the tiles on or above the diagonal, neural-tangents gets x2=None).
# symsweep runs `kernel_matrices`, its real entry point, at the tile side it plans for itself;
# neural-tangents runs ``nt.batch`` over the ``stax`` kernel function at each batch size of
# `batches` (each compiled once, before the timed runs).
WORKER = textwrap.dedent(r"""
import json, resource, sys, time
import numpy as np
side, arch, n, size, kind, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5], sys.argv[6]
batches = [int(b) for b in sys.argv[7].split(",")]
images = np.load(path)[:, :size, :size].astype(np.float32)
x1 = images[:n]
x2 = images[n:2 * n] if kind == "offdiag" else None
DEPTH, W_VAR, B_VAR = 8, 2.0, 0.01

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

if side == "nt":
    sys.path.insert(0, sys.argv[8])
    from ntref import nt, stax
    w_std, b_std = W_VAR ** 0.5, B_VAR ** 0.5
    if arch == "fcn":
        layers = [stax.Flatten()]
        for _ in range(DEPTH):
            layers += [stax.Dense(512, W_std=w_std, b_std=b_std), stax.Relu()]
    else:
        conv = stax.ConvLocal if arch == "lcn" else stax.Conv
        layers = []
        for _ in range(DEPTH):
            layers += [conv(64, (3, 3), padding="CIRCULAR", W_std=w_std, b_std=b_std),
                       stax.Relu()]
        layers += {"vec": [stax.Flatten()], "lcn": [stax.Flatten()],
                   "gap": [stax.GlobalAvgPool()],
                   "lap4": [stax.AvgPool((4, 4), (4, 4)), stax.Flatten()],
                   "lap8": [stax.AvgPool((8, 8), (8, 8)), stax.Flatten()]}[arch]
    kernel_fn = stax.serial(*layers, stax.Dense(10, W_std=w_std, b_std=b_std))[2]
    fns = {b: nt.batch(kernel_fn, batch_size=b, store_on_device=False) for b in batches}
    def run(b):
        k = fns[b](x1, x2, ("nngp", "ntk"))
        return np.asarray(k.nngp), np.asarray(k.ntk)
else:
    from workers.kernels import kernel_matrices, kernel_tile, plan_tiles
    tiles = plan_tiles(n, n, archs=[arch], image_shape=x1.shape[1:], symmetric=x2 is None)
    def run(b):
        r = kernel_matrices([arch], x1, x2, depth=DEPTH, w_var=W_VAR, b_var=B_VAR,
                            dtype=np.float32)[arch]
        return r["nngp"], r["ntk"]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

base = rss_mb()
first = {}
for b in batches:
    t0 = time.perf_counter(); out = run(b); first[b] = time.perf_counter() - t0
info = {"ready": True, "first_s": first}
if side == "ours":
    info["tile_side"] = tiles[0][1] - tiles[0][0]
    info["tiles"] = len(tiles)
print(json.dumps(info), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        t0, c0 = time.perf_counter(), cpu()
        out = run(int(cmd[1]))
        print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": cpu() - c0}),
              flush=True)
    elif cmd[0] == "save":  # the float32 result, and (symsweep) float64 on the first m x m
        m = int(cmd[2])
        arrays = {"nngp": out[0][:m, :m], "ntk": out[1][:m, :m]}
        if side == "ours":
            r64 = kernel_tile([arch], x1[:m], (x1 if x2 is None else x2)[:m], depth=DEPTH,
                              w_var=W_VAR, b_var=B_VAR, dtype=np.float64)[arch]
            arrays.update(nngp64=r64["nngp"], ntk64=r64["ntk"])
        np.savez(cmd[1], **arrays)
        print(json.dumps({"saved": cmd[1],
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                          - base}), flush=True)
    else:
        break
""")


class Worker:
    """One side's persistent worker process (see WORKER)."""

    def __init__(self, side: str, arch: str, n: int, size: int, kind: str, images: str,
                 batches: tuple[int, ...] = (0,)) -> None:
        py = NT_PYTHON if side == "nt" else sys.executable
        cmd = [py, "-c", WORKER, side, arch, str(n), str(size), kind, images,
               ",".join(map(str, batches))]
        if side == "nt":
            cmd.append(NT_TOOLS)
        self.name = f"{side} {arch} {size}x{size} {kind} n={n}"
        self.side, self.n, self.batches = side, n, batches
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.info = self._read()
        self.first_s = {int(b): s for b, s in self.info["first_s"].items()}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"{self.name} failed:\n{self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def entries(arch: str, size: int) -> int:
    """Covariance entries per pair per layer."""
    hw = size * size
    return 1 if arch == "fcn" else hw if arch in ("vec", "lcn") else hw * hw


def flops_per_pair(arch: str, size: int) -> float:
    """The docstring's count: E (2 C + 61 L + 2) (fcn: 2 H W C + 53 L + 2)."""
    if arch == "fcn":
        return (FLOPS_INPUT_PER_CHANNEL * size * size * CHANNELS
                + DEPTH * (FLOPS_AFFINE + FLOPS_RELU) + FLOPS_READOUT)
    per_layer = FLOPS_WINDOW + FLOPS_AFFINE + FLOPS_RELU
    return entries(arch, size) * (FLOPS_INPUT_PER_CHANNEL * CHANNELS + DEPTH * per_layer
                                  + FLOPS_READOUT)


def bytes_per_pair(arch: str, size: int) -> float:
    """One-pass-per-layer traffic: 16 bytes per entry per layer (fcn: plus the two images)."""
    extra = 2 * size * size * CHANNELS * 4 if arch == "fcn" else 0
    return entries(arch, size) * DEPTH * BYTES_PER_ENTRY_LAYER + extra


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_peak(threads: int, copy_numbers: int = 64 * 1024**2) -> dict[str, float]:
    """Multiply-add peak (GFLOP/s) of a jitted micro-kernel and copy bandwidth (GB/s) of
    copying ``copy_numbers`` float32 numbers (default 256 MiB), with `threads` threads running
    at once."""
    import jax
    import jax.numpy as jnp

    chains, steps, n, calls = 16, 32, 65536, 8  # 256 KiB input: L2-resident

    @jax.jit
    def fma(x, a, b):
        # 16 independent chains of 32 dependent multiply-adds per element, in one fused loop:
        # enough independent work per element to keep the FMA units, not memory, busy
        ys = [x + i * 1e-3 for i in range(chains)]
        for _ in range(steps):
            ys = [y * a + b for y in ys]
        return sum(ys)

    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.0, n), jnp.float32)
    a, b = jnp.float32(0.999), jnp.float32(1e-4)
    fma(x, a, b).block_until_ready()

    def timed(work: list) -> float:
        best = math.inf
        for _ in range(5):
            ts = [threading.Thread(target=w) for w in work]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            best = min(best, time.perf_counter() - t0)
        return best

    def fma_calls() -> None:
        for _ in range(calls):
            fma(x, a, b).block_until_ready()

    s = timed([fma_calls] * threads)
    gflops = threads * calls * n * chains * (steps * 2 + 1) / s / 1e9
    big = copy_numbers
    src = np.ones(big, np.float32)
    dst = np.zeros_like(src)
    part = -(-big // threads)
    # np.copyto releases the GIL on large contiguous copies: one slice per thread
    copies = [lambda i=i: np.copyto(dst[i * part:(i + 1) * part], src[i * part:(i + 1) * part])
              for i in range(threads)]
    s = timed(copies)
    return {"fma_gflops": gflops, "copy_gbs": 2 * big * 4 / s / 1e9, "threads": threads}


def measure(arch: str, size: int, n: int, kind: str, batches: tuple[int, ...], images: str,
            reps: int, with_nt: bool) -> dict:
    """The same n x n block (`kind`) on both sides, warm, `reps` rounds alternating symsweep
    and neural-tangents at each batch size; accuracy on the first m x m pairs."""
    ours = Worker("ours", arch, n, size, kind, images)
    nt = Worker("nt", arch, n, size, kind, images, batches) if with_nt else None
    try:
        t: dict = {"ours": [], **{b: [] for b in batches}}
        for _ in range(reps):
            t["ours"].append(ours.ask("run 0"))
            if nt is not None:
                for b in batches:
                    t[b].append(nt.ask(f"run {b}"))
        m = min(n, 16)
        tag = f"{arch}{size}{kind}"
        fo, fn = images + f".ours.{tag}.npz", images + f".nt.{tag}.npz"
        pairs = n * n

        def side(runs: list, first_s: float, peak_mb: float) -> dict:
            wall, cpu = min(r["wall_s"] for r in runs), min(r["cpu_s"] for r in runs)
            return {"wall_s": wall, "cpu_s": cpu, "pairs_per_s": pairs / wall,
                    "pairs_per_cpu_s": pairs / cpu, "compile_s": max(first_s - wall, 0.0),
                    "peak_mb": peak_mb}

        res = {"arch": arch, "size": size, "kind": kind, "pairs": pairs,
               "tile_side": ours.info["tile_side"], "tiles": ours.info["tiles"]}
        res["ours"] = side(t["ours"], ours.first_s[0], ours.ask(f"save {fo} {m}")["peak_mb"])
        ref = np.load(fo)

        def err(f: str) -> float:
            d = np.load(f)
            return max(float(np.max(np.abs(d[k] - ref[k + "64"]) / np.abs(ref[k + "64"])))
                       for k in ("nngp", "ntk"))

        res["ours"]["err"] = err(fo)
        if nt is not None:
            peak = nt.ask(f"save {fn} {m}")["peak_mb"]
            by_batch = {b: side(t[b], nt.first_s[b], peak) for b in batches}
            best = max(batches, key=lambda b: by_batch[b]["pairs_per_s"])
            res["nt"] = dict(by_batch[best], batch=best, err=err(fn))
            res["nt_by_batch"] = {b: by_batch[b]["pairs_per_s"] for b in batches}
        return res
    finally:
        ours.close()
        if nt is not None:
            nt.close()


def roofline_table(rows: list[dict], peak: dict, load: tuple[str, str]) -> str:
    lines = [
        f"Load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}. "
        f"{os.cpu_count()} CPU cores, {peak['threads']} threads. Machine peak in the same run: "
        f"FMA micro-kernel {peak['fma_gflops']:.0f} GFLOP/s, copy {peak['copy_gbs']:.1f} GB/s.",
        "",
        "| arch | input | block | pairs (both sides) | symsweep pairs/s (tile side) "
        "| nt pairs/s (best batch) | speed-up wall (CPU time) | goal | nt pairs/s by batch "
        "| symsweep GFLOP/s (% of FMA peak) | GB/s one-pass model (% of copy) "
        "| compile s symsweep / nt | max rel err vs float64 symsweep / nt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, n = r["ours"], r.get("nt")
        f, b = flops_per_pair(r["arch"], r["size"]), bytes_per_pair(r["arch"], r["size"])
        gf, gb = o["pairs_per_s"] * f / 1e9, o["pairs_per_s"] * b / 1e9
        goal = GOALS[r["arch"]] if r["size"] == 32 else None
        if n:
            ratio = o["pairs_per_s"] / n["pairs_per_s"]
            cratio = o["pairs_per_cpu_s"] / n["pairs_per_cpu_s"]
            sp = f"{ratio:.1f}x ({cratio:.1f}x)"
            nt_s = f"{n['pairs_per_s']:.4g} ({n['batch']})"
            scan = ", ".join(f"{bb}: {v:.3g}" for bb, v in r["nt_by_batch"].items())
            met = "" if goal is None else ("met" if ratio >= goal else f"{ratio / goal:.0%} of")
            goal_s = "" if goal is None else f"{goal:g}x {met}"
            comp, e = f"{o['compile_s']:.1f} / {n['compile_s']:.1f}", f"{n['err']:.1e}"
        else:
            sp = nt_s = scan = e = "-"
            goal_s, comp = "", f"{o['compile_s']:.1f} / -"
        lines.append(
            f"| {r['arch']} | {r['size']}x{r['size']} | {r['kind']} | {r['pairs']} "
            f"| {o['pairs_per_s']:.4g} ({r['tile_side']}) | {nt_s} | {sp} | {goal_s} | {scan} "
            f"| {gf:.3g} ({gf / peak['fma_gflops']:.0%}) "
            f"| {gb:.3g} ({gb / peak['copy_gbs']:.0%}) | {comp} | {o['err']:.1e} / {e} |")
    return "\n".join(lines)


# Work per (image size, arch): n, the block's side (n x n pairs, the same on both sides), and
# the neural-tangents batch sizes tried (divisors of n; nt.batch needs one). The blocks are
# small because neural-tangents is slow on the full-covariance archs (~1-3 pairs/s for gap at
# 32x32 here): 64 pairs of gap is already a minute a repetition on its side. symsweep plans
# its own tiles (at these n one tile: its tile side is n, at most 128 for gap/lap).
SIZES = {
    32: {"fcn": (512, (128, 256, 512)), "vec": (40, (8, 20, 40)), "lcn": (40, (8, 20, 40)),
         "gap": (8, (4, 8)), "lap4": (8, (4, 8)), "lap8": (8, (4, 8))},
    16: {"fcn": (512, (128, 256, 512)), "vec": (64, (16, 32, 64)), "lcn": (64, (16, 32, 64)),
         "gap": (16, (4, 8, 16)), "lap4": (16, (4, 8, 16)), "lap8": (16, (4, 8, 16))},
}
KINDS = ("offdiag", "sym")
# --quick: 8x8 images, a few pairs (seconds: it checks the harness, not the speed); by
# default fcn on an off-diagonal block and gap on a symmetric one (both block kinds, the dense
# and the full-covariance path, four worker start-ups instead of eight)
QUICK_SIZE, QUICK_ARCHS = 8, ("fcn", "gap")
QUICK_KINDS = {"fcn": ("offdiag",), "gap": ("sym",)}
QUICK = {"fcn": (16, (8, 16)), "vec": (8, (4, 8)), "lcn": (8, (4, 8)), "gap": (4, (2, 4)),
         "lap4": (4, (2, 4)), "lap8": (4, (2, 4))}


def ideas(size: int, n: int, reps: int) -> str:
    """Engine variants on gap at size x size, n x n pairs, interleaved in this process."""
    import jax

    from workers import kernels as K

    x = np.random.default_rng(2022).standard_normal((n, size, size, 3)).astype(np.float32)
    orig = {k: getattr(K, k) for k in ("_relu_inv", "_window_pair", "_ITEM_ENTRIES_CPU")}

    def relu_select(k, t, s1, i1, s2, i2, same):  # the per-entry select of relu_kernels
        return K.relu_kernels(k, t, s1, s2, same)

    def window_fused(k, t):  # rolls fused into the layer's loop (no materialised padding)
        return K._box(k, (0, 1)), K._box(t, (0, 1))

    variants = {
        "engine (all kept ideas)": {},
        "ReLU with per-entry select": {"_relu_inv": relu_select},
        "window by rolls fused into the layer": {"_window_pair": window_fused},
        "one thread": {"threads": 1},
        **{f"work items 2^{e}": {"_ITEM_ENTRIES_CPU": 2**e} for e in (16, 17, 19, 20)},
        "previous engine (select, fused rolls, one thread)": {
            "_relu_inv": relu_select, "_window_pair": window_fused, "threads": 1},
    }

    def run(v: dict) -> tuple[float, float]:
        for k, val in orig.items():
            setattr(K, k, v.get(k, val))
        jax.clear_caches()
        kw = {"threads": v["threads"]} if "threads" in v else {}
        K.kernel_tile(["gap"], x, x, **kw)  # compile (with this variant's globals)
        best_w = best_c = math.inf
        for _ in range(reps):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            K.kernel_tile(["gap"], x, x, **kw)
            w = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            c = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            best_w, best_c = min(best_w, w), min(best_c, c)
        return best_w, best_c

    load0 = loadavg()
    res = {name: [] for name in variants}
    for _ in range(2):  # two interleaved rounds over all variants
        for name, v in variants.items():
            res[name].append(run(v))
    for k, val in orig.items():
        setattr(K, k, val)
    jax.clear_caches()
    base_w = min(r[0] for r in res["engine (all kept ideas)"])
    base_c = min(r[1] for r in res["engine (all kept ideas)"])
    lines = [f"gap at {size}x{size}, {n} x {n} pairs, float32, depth {DEPTH}; load average "
             f"before {load0}, after {loadavg()}; best of {2 * reps} per variant, two "
             "interleaved rounds.", "",
             "| variant | pairs/s | pairs per CPU-second | wall vs engine | CPU vs engine |",
             "|---|---|---|---|---|"]
    for name, r in res.items():
        w, c = min(x[0] for x in r), min(x[1] for x in r)
        lines.append(f"| {name} | {n * n / w:.4g} | {n * n / c:.4g} | {w / base_w:.2f}x "
                     f"| {c / base_c:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="kernel roofline benchmark vs neural-tangents")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: 8x8, fcn,gap, a few pairs, 1 rep; checks the harness "
                         "(symsweep's side alone when neural-tangents' environment is absent)")
    ap.add_argument("--archs", default=None,
                    help="comma-separated archs (default: all; --quick: fcn,gap)")
    ap.add_argument("--size", type=int, action="append", choices=(16, 32),
                    help="image size (repeatable; default 32 and 16)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions per side and batch size (default 2; --quick 1)")
    ap.add_argument("--kinds", default=None,
                    help="blocks to time: offdiag (n x n distinct images), sym (n images with "
                         "themselves); default both (--quick: fcn offdiag, gap sym)")
    ap.add_argument("--no-nt", action="store_true", help="symsweep side only")
    ap.add_argument("--ideas", action="store_true", help="engine variants, interleaved")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README")
    args = ap.parse_args()
    default_archs = QUICK_ARCHS if args.quick else ALL_ARCHS
    archs = [a.strip() for a in (args.archs or ",".join(default_archs)).split(",") if a.strip()]
    bad = [a for a in archs if a not in ALL_ARCHS]
    if bad:
        print(f"unknown arch {bad}; choose from {','.join(ALL_ARCHS)}", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in (args.kinds or ",".join(KINDS)).split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        print(f"--kinds {args.kinds!r}: choose from {','.join(KINDS)}", file=sys.stderr)
        return 2
    if args.quick and args.size:
        print("--quick runs at 8x8; drop --size", file=sys.stderr)
        return 2
    sizes = [QUICK_SIZE] if args.quick else (args.size or [32, 16])
    with_nt = not args.no_nt
    if with_nt and not (os.access(NT_PYTHON, os.X_OK)):
        if not args.quick:
            print(f"no neural-tangents reference environment at {NT_PYTHON}: build it with "
                  "../shared/tools/nt-reference-env.sh (or set NT_REF_PYTHON), or pass --no-nt",
                  file=sys.stderr)
            return 2
        print(f"SKIPPED the neural-tangents side: no reference environment at {NT_PYTHON} "
              "(../shared/tools/nt-reference-env.sh builds it); timing symsweep's side only",
              file=sys.stderr, flush=True)
        with_nt = False
    print(f"load average before: {loadavg()}", file=sys.stderr, flush=True)
    if args.ideas:
        size = sizes[0]
        print(ideas(size, 8 if size == 32 else 16, args.reps or 2))
        return 0
    from workers.kernels import host_threads

    reps = args.reps or (1 if args.quick else 2)
    rng = np.random.default_rng(2022)
    # the images and the saved results: removed when the process exits (its finaliser)
    tmp_dir = tempfile.TemporaryDirectory(prefix="symsweep-bench-")
    tmp = tmp_dir.name
    images = os.path.join(tmp, "images.npy")
    np.save(images, rng.standard_normal((1024, 32, 32, CHANNELS)).astype(np.float32))  # 2n <= 1024
    load0 = loadavg()
    copy_numbers = 1024**2 if args.quick else 64 * 1024**2
    peak = machine_peak(host_threads(), copy_numbers)
    print(f"peak: {peak}", file=sys.stderr, flush=True)
    rows = []
    for size in sizes:
        for arch in archs:
            if arch == "lap8" and size < 8:
                continue
            n, batches = (QUICK if args.quick else SIZES[size])[arch]
            arch_kinds = kinds
            if args.quick and args.kinds is None:
                arch_kinds = QUICK_KINDS.get(arch, KINDS)
            for kind in arch_kinds:
                r = measure(arch, size, n, kind, batches, images, reps, with_nt)
                rows.append(r)
                o = r["ours"]
                msg = (f"{arch} {size}x{size} {kind} {n}x{n}: symsweep "
                       f"{o['pairs_per_s']:.4g} pairs/s")
                if with_nt:
                    ntr = r["nt"]
                    msg += (f", nt {ntr['pairs_per_s']:.4g} pairs/s at batch {ntr['batch']} "
                            f"({o['pairs_per_s'] / ntr['pairs_per_s']:.1f}x)")
                print(msg + f"; load {loadavg()}", file=sys.stderr, flush=True)
    peak_after = machine_peak(host_threads(), copy_numbers)
    peak = {k: max(peak[k], peak_after[k]) for k in peak}
    cmd = "python benchmarks/kernels.py " + " ".join(sys.argv[1:])
    table = (f"`{cmd.strip()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Depth "
             f"{DEPTH}, float32, NNGP + NTK, warm, best of {reps} interleaved repetitions per "
             "side and nt batch size, the same n x n block on both sides; flop and byte "
             "counts per pair: the script's docstring.\n\n"
             + roofline_table(rows, peak, (load0, loadavg())))
    print(table)
    if not args.no_readme and not args.quick:
        readme = ROOT / "benchmarks" / "README.md"
        text = readme.read_text()
        start, end = "<!-- kernels:start -->", "<!-- kernels:end -->"
        block = f"{start}\n{table}\n{end}"
        if start in text and end in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n## Kernels (`benchmarks/kernels.py`)\n\n" + block + "\n"
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
