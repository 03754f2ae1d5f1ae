"""Every benchmark's ``--quick`` mode runs (issue 27, item 4): a schema or API change that
breaks a script in benchmarks/ fails here, not months later when someone re-measures.

Each script runs as a user runs it, in a subprocess from an empty working folder, and must exit
0, print the lines its real run prints (its table header or JSON result), and write nothing
into the working folder or into the benchmark results kept in the repository. A new script
in benchmarks/ without an entry in QUICK fails `test_every_benchmark_has_a_quick_test`.

The default suite (`make test`) runs every quick mode (issue 27: "make test runs every
benchmark's --quick mode"). The three longest (imagenet_loader.py, gpu_check.sh,
rehearsal.py: loader processes, compiles, two Ray start-ups) add about a minute and a half on
a quiet 2-core machine; the third field of QUICK stays for a script that ever needs `slow`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> (extra arguments after --quick, patterns its output must contain, slow).
# The patterns are the result lines of the real run: if a script stops printing them, its
# documented output has changed.
QUICK: dict[str, tuple[list[str], list[str], bool]] = {
    "store.py": ([], [r"\| attempts \| reader \| store \| status s \| query s \| table s \|",
                      r"\| 40 \| new \| compacted \|", r'^\{"attempts": 40, '], False),
    "kernels.py": ([], [r"\| arch \| input \| block \| pairs \(both sides\) \| symsweep pairs/s",
                        r"^\| fcn \| 8x8 \| offdiag \| 256 \|",
                        r"^\| gap \| 8x8 \| sym \| 16 \|"], False),
    "train.py": ([], [r"\| arch \| loop \| width \| params \| steps \|", r"^\| fcn \| "],
                 False),
    "memory.py": ([], [r"\| case \| arch \| N \| path \|", r"^\| matrix \| fcn 8px \| 45 \| old",
                       r"^\| matrix \| fcn 8px \| 45 \| new", r"^\| cell \| fcn 8px \| 45 \| old",
                       r"^\| cell \| fcn 8px \| 45 \| new"], False),
    "fig2_cpu_ntk.py": ([], [r"\| NTK test acc \(%\) \| identity \|",
                             r"^\| (fcn|vec|lcn|gap|lap4|lap8) \| \d"], False),
    "fig2_cpu_tradeoff.py": ([], [r"^\| NTK test acc \(%\) \+- s\.e\. \| identity \|",
                                  r"^\| gap > vec on identity \| [+-]\d",
                                  r"^\| lcn = vec on identity \| ",
                                  r"^\| gap: pixel_rotation > permutation \| "], False),
    "nt_gap_standalone.py": ([], [r"(nt jit|symsweep kernel_tile) N=2 8x8: .* pairs/s"], False),
    "durable_writes.py": ([], [r"^file\s+size\s+fsync ms\s+no fsync ms\s+extra ms",
                               r"^trial part\s+6000\s", r"^running marker\s+300\s"], False),
    # grain's import and two spawned loader processes a transform: ~8 s quiet, ~14 s at load 2
    "imagenet_loader.py": ([], [r"\| transform \| 2 threads: images/s",
                                r"^\| identity \| ", r"^\| pixel_rotation \| ",
                                r"^\| total \| .* \| 100% \|"], False),
    # kernels in two dtypes and two trainers compiled: ~10 s quiet, ~12 s at load 2
    "gpu_check.sh": (["--python", sys.executable],
                     [r"accuracy fcn: max rel err .* \(ok\)", r"accuracy gap: .* \(ok\)",
                      r"kernel gap\+lap4\+lap8 8x8: .* pairs/s", r"trainer gap width 4: ",
                      r"gpu_check finished in \d+ s \(exit 0\)"], False),
    # a three-node Ray cluster of this machine, one node removed half-way: about 40 s
    "cluster_kernels.py": ([], [r"^\| cell \| tiles computed \| waited for \|",
                                r'"propagations": 2', r'"tiles_computed_twice": 0',
                                r'"killed_node_tiles_lost": 0', r'"nodes_used": 2'], False),
    # two Ray start-ups and a SIGKILLed driver: about a minute on a quiet machine
    "rehearsal.py": ([], [r'"trials_lost": 0', r'"trials_run_twice": 0',
                          r'"exit_code_resubmission": 0'], False),
}
# covered through gpu_check.sh --quick, which runs it with --quick
COVERED_BY = {"gpu_check.py": "gpu_check.sh"}


def _results_digest() -> dict[str, str]:
    """Hashes of the benchmark results kept in the repository (README tables, JSON, text)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(BENCH.iterdir()) if p.suffix in (".md", ".json", ".txt")}


def test_every_benchmark_has_a_quick_test() -> None:
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    missing = scripts - set(QUICK) - set(COVERED_BY)
    assert not missing, f"benchmarks without a --quick test here: {sorted(missing)}"
    assert set(QUICK) <= scripts, f"stale entries: {sorted(set(QUICK) - scripts)}"


def _run_quick(script: str, tmp_path: Path) -> str:
    args, patterns, _ = QUICK[script]
    path = BENCH / script
    cmd = (["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)])
    cmd += ["--quick", *args]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if script not in ("rehearsal.py", "cluster_kernels.py"):  # Ray's socket paths under
        # pytest's tmp_path can be too long
        env["TMPDIR"] = str(tmp_path)
    before = _results_digest()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{out[-4000:]}"
    for pat in patterns:
        assert re.search(pat, out, re.MULTILINE), f"{script} --quick: no /{pat}/ in:\n{out[-4000:]}"
    assert list(cwd.iterdir()) == [], f"{script} --quick wrote into its working folder"
    assert _results_digest() == before, f"{script} --quick changed benchmarks/ results files"
    return out


@pytest.mark.parametrize("script", [
    pytest.param(s, marks=[pytest.mark.slow] if QUICK[s][2] else []) for s in QUICK])
def test_quick_mode_runs(script: str, tmp_path: Path) -> None:
    out = _run_quick(script, tmp_path)
    # the quick run's temporary folders (under TMPDIR = tmp_path) are removed again
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "cwd")
    assert left == [], f"{script} --quick left temporary files behind: {left}"
    if script == "store.py":  # the figure the JSON line reports is a time for every command
        res = json.loads(out.strip().splitlines()[-1])
        assert res["attempts"] == 40 and res["n_old"] == 20
        assert set(res["compacted"]) == {"status", "query", "table"}
    if script in ("kernels.py", "nt_gap_standalone.py") and "SKIPPED" in out:
        # without neural-tangents' environment the skip is said, not silent
        assert "neural-tangents" in out.split("SKIPPED", 1)[1][:80]
