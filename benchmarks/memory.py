"""Peak memory of `kernel_matrix` and of a whole kernel cell: streamed assembly vs the old one.

    PYTHONPATH=. python benchmarks/memory.py [--sizes 2000 4000] [--arch fcn] [--side 500]
    PYTHONPATH=. python benchmarks/memory.py --quick   # seconds: N = 45 at 8x8, tiles of 32

``--quick`` (what ``make test`` runs) measures both cases, both paths, at one tiny size; the
first measurement runs in a fresh subprocess as every real one does (the harness), the others
in this process (one jax start-up and compile instead of four: its numbers say nothing).

Cases (each at every size N, new and old code path interleaved in the same run):

* ``matrix``: ``kernel_matrix(arch, x)`` symmetric, N x N, tiles of ``--side``; returns NNGP +
  NTK, 2 x N^2 x 4 bytes.
* ``cell``: ``run_kernel_trial`` on synthetic 32x32 data with the paper's split proportions
  (train N, val N/9, test 2N/9, as 45k/5k/10k), kernels + both regressions; its matrices are
  2 x N (N + V + M) x 4 bytes.

The old path is the assembly and regression as they were before this benchmark's change, kept
here as private reference functions (`_old_kernel_matrices`, `_old_kernel_predict`,
`_old_cell`): every tile result kept in a list, all requested archs assembled (a gap cell
assembled gap, lap4 and lap8), `np.triu_indices` over the whole matrix for the mirror, and the
regression on a stacked float64 copy of every kernel block plus a symmetrised copy.

How it is measured, and why: each measurement runs in a fresh subprocess (the RSS high-water
mark only rises within a process, and allocator state of one case must not help the next).
Two numbers per measurement:

* ``tracemalloc``: peak of the bytes traced by Python's tracemalloc above the level just before
  the call. NumPy registers every array buffer with tracemalloc, so this is exactly the NumPy
  (and Python object) memory: the output, tile results, index arrays, float64 copies. It does
  not see XLA's own buffers (the tile's working set inside the compiled kernel), which are
  bounded by the tile budget.
* ``rss``: the process's RSS high-water mark (``resource.getrusage(...).ru_maxrss``) minus its
  RSS just before the call, after a warm-up that compiled the same tile shapes. It sees
  everything the process touched, XLA buffers included, but also allocator slack.

Ratios are to the bytes of the matrices the call returns (matrix) or holds (cell); the target
is <= 1.3x plus a constant. The load average is printed at the start and end. One JSON line
per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------ old reference
def _old_kernel_matrices(archs: Any, x1: np.ndarray, x2: np.ndarray | None = None, *,
                         depth: int = 8, dtype: Any = np.float32,
                         max_side: int | None = None) -> dict:
    """The assembly of `workers.kernels.kernel_matrices` before streaming (reference only)."""
    from workers.kernels import _check_archs, kernel_tile, plan_tiles

    archs = _check_archs(archs)
    symmetric = x2 is None
    x2a = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2a.shape[0]
    tiles = plan_tiles(n1, n2, archs=archs, image_shape=x1.shape[1:], symmetric=symmetric,
                       itemsize=np.dtype(dtype).itemsize, max_side=max_side)
    results = [kernel_tile(archs, x1[r0:r1], x2a[c0:c1], depth=depth, dtype=dtype)
               for r0, r1, c0, c1 in tiles]
    out = {a: {k: np.zeros((n1, n2), np.dtype(dtype)) for k in ("nngp", "ntk")} for a in archs}
    for (r0, r1, c0, c1), res in zip(tiles, results, strict=True):
        for a in archs:
            for k in ("nngp", "ntk"):
                out[a][k][r0:r1, c0:c1] = res[a][k]
                if symmetric and c0 != r0:
                    out[a][k][c0:c1, r0:r1] = res[a][k].T
    if symmetric:
        for a in archs:
            for k in ("nngp", "ntk"):
                m = out[a][k]
                iu = np.triu_indices(n1, 1)
                m[(iu[1], iu[0])] = m[iu]
    return out


def _old_kernel_predict(kxx: np.ndarray, ksx: np.ndarray, y: np.ndarray,
                        diag_reg: float = 1e-6) -> np.ndarray:
    """`workers.regression.kernel_predict` before the one-copy solve (reference only)."""
    import scipy.linalg

    kxx = np.asarray(kxx, np.float64)
    ksx = np.asarray(ksx, np.float64)
    y = np.asarray(y, np.float64)
    assert np.all(np.isfinite(kxx)) and np.all(np.isfinite(ksx))
    n = kxx.shape[0]
    scale = float(np.mean(np.diag(kxx)))
    a = 0.5 * (kxx + kxx.T)
    a[np.diag_indices(n)] += diag_reg * scale
    c = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
    return ksx @ scipy.linalg.cho_solve(c, y, check_finite=False)


def _old_cell(config: dict) -> dict:
    """`run_kernel_trial` before streaming: all gap/lap readouts assembled, stacked solve."""
    from workers.data import build_dataset

    ds = build_dataset(dict(config))
    arch = config["arch"]
    archs = ["gap", "lap4", "lap8"] if arch in ("gap", "lap4", "lap8") else [arch]
    kw = dict(depth=int(config.get("depth", 8)), max_side=config.get("tile_side"))
    k_tr = _old_kernel_matrices(archs, ds.x_train, None, **kw)[arch]
    k_te = _old_kernel_matrices(archs, ds.x_test, ds.x_train, **kw)[arch]
    k_va = _old_kernel_matrices(archs, ds.x_val, ds.x_train, **kw)[arch]
    accs = {}
    for kind in ("nngp", "ntk"):
        blocks = np.concatenate([k_tr[kind], k_te[kind], k_va[kind]])
        pred = _old_kernel_predict(k_tr[kind], blocks, ds.y_train)
        n, m = len(ds.x_train), len(ds.x_test)
        accs[kind] = float(np.mean(np.argmax(pred[n:n + m], 1) == ds.labels_test))
    return {"test_acc": accs["ntk"], "nngp_test_acc": accs["nngp"]}


# ------------------------------------------------------------------------------ one measurement
def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _cell_config(n: int, arch: str, side: int, hw: int = 32) -> dict:
    return {"dataset": "synthetic", "arch": arch, "inference": "ntk", "depth": 8,
            "train_size": n, "val_size": n // 9, "test_size": 2 * n // 9, "image_size": hw,
            "tile_side": side, "kernel_dtype": "float32"}


def measure_one(case: str, path: str, n: int, arch: str, side: int, hw: int = 32) -> dict:
    """Peak memory of one call in this (fresh) process; see the module docstring."""
    import tracemalloc

    from workers.kernels import kernel_matrix, kernel_tile

    rng = np.random.default_rng(0)
    # warm-up: compile the tile shapes of the measured call (padded to multiples of 8)
    wside = min(side, 128) if arch in ("gap", "lap4", "lap8") else side  # full-cov cap 128
    xw = rng.standard_normal((wside, hw, hw, 3)).astype(np.float32)
    kernel_tile([arch], xw, xw, depth=8)
    if case == "cell":
        from workers.kernel_trial import run_kernel_trial

        cfg = _cell_config(n, arch, side, hw)
        tiny = {**cfg, "train_size": 40, "val_size": 10, "test_size": 10}
        run_kernel_trial(tiny) if path == "new" else _old_cell(tiny)
        v, m = n // 9, 2 * n // 9
        out_bytes = 2 * n * (n + v + m) * 4
        fn = (lambda: run_kernel_trial(cfg)) if path == "new" else (lambda: _old_cell(cfg))
    else:
        x = rng.standard_normal((n, hw, hw, 3)).astype(np.float32)
        out_bytes = 2 * n * n * 4
        if path == "new":
            def fn() -> Any:
                return kernel_matrix(arch, x, max_side=side)
        else:
            def fn() -> Any:
                return _old_kernel_matrices([arch], x, max_side=side)[arch]
    tracemalloc.start()
    base_tm = tracemalloc.get_traced_memory()[0]
    rss0, maxrss0 = _rss_now(), _maxrss()
    t0 = time.perf_counter()
    res = fn()
    wall = time.perf_counter() - t0
    peak_tm = tracemalloc.get_traced_memory()[1] - base_tm
    tracemalloc.stop()
    maxrss = _maxrss()
    del res
    return {"case": case, "path": path, "n": n, "arch": arch, "side": side, "image": hw,
            "out_bytes": out_bytes, "tracemalloc_peak": peak_tm,
            "rss_peak": max(0, maxrss - rss0), "rss_before": rss0,
            "maxrss_before": maxrss0, "wall_s": wall,
            "ratio_tm": peak_tm / out_bytes, "ratio_rss": max(0, maxrss - rss0) / out_bytes}


def _run_sub(case: str, path: str, n: int, arch: str, side: int, hw: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.abspath(__file__), "--one", case, path, str(n), arch,
           str(side), str(hw)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mb(b: float) -> str:
    return f"{b / 1e6:,.0f}"


def table(rows: list[dict]) -> str:
    """Markdown table of the measurements; ``growth`` is (peak at the larger N - peak at the
    smaller) / (returned bytes at the larger - at the smaller): the constant cancels. For a
    cell, ``+f64`` divides by its matrices plus the one float64 N x N working copy of the
    solve (8 N^2 bytes), which the cell is allowed."""
    out = ["| case | arch | N | path | matrices MB | tracemalloc peak MB | / matrices | "
           "/ (matrices +f64) | growth | RSS peak MB | / matrices | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        copy = 8 * r["n"] ** 2 if r["case"] == "cell" else 0
        prev = [q for q in rows if q["case"] == r["case"] and q["path"] == r["path"]
                and q["n"] < r["n"]]
        growth = "-"
        if prev:
            q = max(prev, key=lambda q: q["n"])
            slope = ((r["tracemalloc_peak"] - q["tracemalloc_peak"])
                     / (r["out_bytes"] - q["out_bytes"]))
            growth = f"{slope:.2f}x"
        plus = f"{r['tracemalloc_peak'] / (r['out_bytes'] + copy):.2f}x" if copy else "-"
        out.append(f"| {r['case']} | {r['arch']} {r.get('image', 32)}px | {r['n']} | {r['path']} | "
                   f"{_mb(r['out_bytes'])} | {_mb(r['tracemalloc_peak'])} | "
                   f"{r['ratio_tm']:.2f}x | {plus} | {growth} | {_mb(r['rss_peak'])} | "
                   f"{r['ratio_rss']:.2f}x | {r['wall_s']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000])
    ap.add_argument("--arch", default="fcn")
    ap.add_argument("--side", type=int, default=500, help="tile side (max_side)")
    ap.add_argument("--cases", nargs="+", default=["matrix", "cell"])
    ap.add_argument("--image-size", type=int, default=32, help="synthetic image side")
    ap.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--table-from", help="only print the table of a saved run's JSON lines")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: both cases, old and new path, fcn at N = 45, 8x8 images, "
                         "tiles of 32; the first measurement in a subprocess, the rest in "
                         "this one")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.arch, a.side, a.image_size = [45], "fcn", 32, 8
        a.cases = ["matrix", "cell"]
    if a.table_from:
        with open(a.table_from) as f:
            print(table([json.loads(ln) for ln in f if ln.startswith("{")]))
        return 0
    if a.one:
        case, path, n, arch, side, hw = a.one
        print(json.dumps(measure_one(case, path, int(n), arch, int(side), int(hw))))
        return 0
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for case in a.cases:
        for n in a.sizes:
            for path in ("old", "new"):  # interleaved: old then new at each size
                if a.quick and rows:  # --quick: the harness once, then in this process
                    r = measure_one(case, path, n, a.arch, a.side, a.image_size)
                else:
                    r = _run_sub(case, path, n, a.arch, a.side, a.image_size)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
