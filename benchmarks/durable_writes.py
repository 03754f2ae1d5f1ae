"""What durable writes cost: `write_atomic` with its fsyncs against the same write without them.

Both sides write the same files (a trial part's size, an in-flight point's, a marker's) through
the same `orchestrator.fsio.write_atomic`, interleaved in one run on the same directory; the
"no fsync" side replaces ``os.fsync`` with a no-op for its turn (what symsweep did before
issue 30). With ``--sweep``, the fig2 smoke sweep restricted to fcn / identity (11 trials) runs
under ``strace -f -c -e trace=fsync`` (every process: driver, Ray workers) to count its fsyncs
and the time spent in them, against the sweep's wall time.

    python benchmarks/durable_writes.py [--dir DIR] [--n 300] [--sweep] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.fsio import resolve_root, write_atomic  # noqa: E402

SIZES = {"trial part": 6_000, "in-flight point": 2_500, "running marker": 300}


def _time_writes(d: str, size: int, n: int, sync: bool) -> float:
    """Seconds per write_atomic of ``size`` bytes into ``d`` (n writes, distinct names)."""
    fs, base = resolve_root(d)
    data = os.urandom(size)
    real = os.fsync
    if not sync:
        os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        for i in range(n):
            write_atomic(fs, f"{base}/{'s' if sync else 'n'}-{i:06d}.bin", data)
        return (time.perf_counter() - t0) / n
    finally:
        os.fsync = real


def micro(d: str, n: int, rounds: int) -> None:
    print(f"write_atomic into {d} ({n} writes a round, {rounds} rounds interleaved)")
    print(f"{'file':<16} {'size':>7} {'fsync ms':>9} {'no fsync ms':>12} {'extra ms':>9}")
    for what, size in SIZES.items():
        with_s, without = [], []
        for _ in range(rounds):
            for sync, out in ((True, with_s), (False, without)):
                sub = tempfile.mkdtemp(prefix="dw-", dir=d)
                out.append(_time_writes(sub, size, n, sync))
                shutil.rmtree(sub)
        a, b = statistics.median(with_s) * 1e3, statistics.median(without) * 1e3
        print(f"{what:<16} {size:>7} {a:>9.3f} {b:>12.3f} {a - b:>9.3f}")


def sweep(results: str, repo: Path, label: str) -> None:
    """The smoke sweep (fcn / identity) of the checkout ``repo`` under strace: fsync count
    and seconds, wall time."""
    if shutil.which("strace") is None:
        print("--sweep: strace is not installed here; skipped")
        return
    shutil.rmtree(results, ignore_errors=True)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "sweeps/fig2.py", "--preset",
           "smoke", "--only", "arch=fcn", "--only", "transform=identity", "--results", results,
           "--no-progress", "--no-report"]
    out = os.path.join(tempfile.mkdtemp(), "strace.txt")
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    r = subprocess.run(["strace", "-f", "-c", "-o", out, "-e", "trace=fsync,fdatasync", *cmd],
                       cwd=repo, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {r.returncode}): {r.stderr[-500:]}")
    text = open(out).read()
    # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
    secs, n = 0.0, 0
    for line in text.splitlines():
        tok = line.split()
        if len(tok) in (5, 6) and tok[-1] in ("fsync", "fdatasync"):
            secs, n = secs + float(tok[1]), n + int(tok[3])
    done = next((ln for ln in (r.stdout + r.stderr).splitlines() if " trials: " in ln), "?")
    print(f"{label:<10} fig2 smoke (fcn, identity; 11 trials): {n:>5} fsync/fdatasync calls, "
          f"{secs:6.2f} s inside them (all processes), sweep wall {wall:5.1f} s under strace\n"
          f"{'':<11}{done.strip()[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder "
                    "under ./results, the disk a sweep writes to; with --quick, under TMPDIR)")
    ap.add_argument("--n", type=int, default=300, help="writes per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sweep", action="store_true", help="also count a smoke sweep's fsyncs")
    ap.add_argument("--baseline", default=None, help="a checkout of the code before durable "
                    "writes (e.g. `git worktree add /tmp/base dc651b0`): its sweep is counted "
                    "too, interleaved, so MLflow's and Ray's own fsyncs cancel out")
    ap.add_argument("--repeats", type=int, default=2, help="sweeps per side")
    ap.add_argument("--quick", action="store_true", help="seconds: few writes, no sweep")
    a = ap.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = a.dir or (None if a.quick else "results")  # --quick: the temporary folder
    if base is not None:
        os.makedirs(base, exist_ok=True)
    # absolute: the sweeps run with each checkout as their working folder
    d = os.path.abspath(tempfile.mkdtemp(prefix=".bench-durable-", dir=base))
    try:
        micro(d, 20 if a.quick else a.n, 1 if a.quick else a.rounds)
        if a.sweep and not a.quick:
            here = Path(__file__).resolve().parents[1]
            sides = [("durable", here)] + ([("baseline", Path(a.baseline))] if a.baseline
                                           else [])
            for _ in range(a.repeats):
                for label, repo in sides:
                    sweep(os.path.join(d, "sweep"), repo, label)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
