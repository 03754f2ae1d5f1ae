"""Benchmark: the results store's readers at 10^5 attempts (issue 11, item 3).

    .venv/bin/python benchmarks/store.py [--n 100000] [--n-old 2000] [--cache /tmp/symsweep-bench]
    .venv/bin/python benchmarks/store.py --quick   # seconds: 40 / 20 attempts, a temporary cache

Synthetic attempts in the real TRIAL_SCHEMA / HISTORY_SCHEMA, one trial part and one history
part per attempt (about 20% of the trials have a failed first attempt and a second one; 4
history rows per attempt), each attempt written by ``Store.write_attempt``, the runner's own
writer, so the parts follow the current schemas and file names; cached under ``--cache``
between runs (writing 2 x 10^5 files takes minutes) and regenerated when a schema changes.

Three commands are timed end to end, each as the CLI function itself with stdout discarded:
``status`` (manifest + latest view + per-trial counts), ``query`` (views over trial and
history parts, one GROUP BY) and ``table`` (latest view + Fig. 2 cells). Two readers:

* old: today's reader before this change, kept below as ``_old_read_trials_all`` /
  ``_old_read_history`` (one ``pq.read_table`` per part file), swapped into ``Store``;
* new: ``Store`` as it is (one pyarrow-dataset scan over every loose part; compacted files
  read whole).

At ``--n-old`` attempts both readers run, interleaved (old, new, old, new, ... per command),
``--repeats`` times; the medians are printed. The old reader is NOT run at ``--n`` (about
3 ms per part file, i.e. several minutes per command at 10^5): its time there is extrapolated
linearly from ``--n-old`` (it is one file read per attempt, so linear), and marked so.
At ``--n`` the new reader runs on the loose parts (once, unless ``--skip-big-loose``), then
the store is compacted (``Store.compact``, timed) and the three commands run again
``--repeats`` times. The cached big store stays compacted afterwards; a later run that finds it
so measures only the compacted store (pass ``--regenerate`` for the loose numbers).

The load average is printed with every measurement (the machine is shared). The last line is
JSON: ``{"attempts": N, "status_s", "query_s", "table_s"}`` for the new reader at N on the
store as a run leaves it (loose parts), with the compacted store's times and the old reader's
(measured at n_old, extrapolated to N) beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from orchestrator import cli  # noqa: E402
from orchestrator.store import (  # noqa: E402
    HISTORY_SCHEMA,
    TIME_KEY,
    TRIAL_SCHEMA,
    Store,
    parse_part_name,
)

SWEEP = "bench"
ARCHS = ("fcn", "vec", "lcn", "gap", "lap4", "lap8")
INFS = ("nn", "nn+", "ntk", "nngp")
TRANSFORMS = ("identity", "permutation", "translation", "rotation")


# ------------------------------------------------------------------ today's reader (reference)
def _old_read_trials_all(self: Store) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The reader before issue 11: one pq.read_table per trial part file."""
    tables, corrupt = [], []
    for p in self.parts():
        try:
            t = pq.read_table(f"{self.trials_dir}/{p.name}", filesystem=self.fs)
            t = t.select(TRIAL_SCHEMA.names).cast(TRIAL_SCHEMA)
            if t.num_rows != 1:
                raise ValueError(f"expected 1 row, found {t.num_rows}")
            tables.append(t)
        except Exception as ex:
            corrupt.append((p.name, f"{type(ex).__name__}: {str(ex)[:200]}"))
    table = pa.concat_tables(tables) if tables else TRIAL_SCHEMA.empty_table()
    return table, corrupt


def _old_read_history(self: Store) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The history reader before issue 11: one pq.read_table per history part file."""
    tables, corrupt = [], []
    for name in self._list(self.history_dir):
        if parse_part_name(name) is None:
            continue
        try:
            tables.append(pq.read_table(f"{self.history_dir}/{name}",
                                        filesystem=self.fs).cast(HISTORY_SCHEMA))
        except Exception as ex:
            corrupt.append((name, f"{type(ex).__name__}: {str(ex)[:200]}"))
    table = pa.concat_tables(tables) if tables else HISTORY_SCHEMA.empty_table()
    return table, corrupt


NEW = (Store.read_trials_all, Store.read_history)
OLD = (_old_read_trials_all, _old_read_history)


# ------------------------------------------------------------------ synthetic store
def _schema_tag() -> str:
    """A short fingerprint of TRIAL_SCHEMA + HISTORY_SCHEMA: a cached store written under an
    older schema does not count as generated, so a schema change regenerates it."""
    text = f"{TRIAL_SCHEMA}\n{HISTORY_SCHEMA}".encode()
    return hashlib.sha256(text).hexdigest()[:12]


def generate(root: str, n: int, seed: int = 0) -> None:
    """n attempts of sweep SWEEP under root, each written by ``Store.write_attempt`` (the
    runner's writer: its row conversion, its history table, its part names), so the parts
    follow the current schemas. Cached: kept if a marker says it is complete and was written
    under the current schemas."""
    d = f"{root}/{SWEEP}"
    marker = f"{d}/.generated-{n}-{_schema_tag()}"
    if os.path.exists(marker):
        return
    shutil.rmtree(d, ignore_errors=True)
    store = Store(root, SWEEP)
    rng = random.Random(seed)
    t0 = time.time()
    i = k = 0
    trials = []
    when = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    when_ms = int(when.timestamp() * 1000)
    while i < n:
        tid = f"{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
        cfg = {"arch": ARCHS[k % 6], "inference": INFS[(k // 6) % 4],
               "transform": TRANSFORMS[(k // 24) % 4], "seed": k // 96, "width": 64}
        kind = "kernel" if cfg["inference"] in ("ntk", "nngp") else "train"
        trials.append({"trial_id": tid, "kind": kind, "config": cfg, "resources": {"cpu": 1},
                       "derived_from": None})
        k += 1
        n_att = 2 if rng.random() < 0.2 and i + 1 < n else 1
        for a in range(1, n_att + 1):
            status = "failed" if a < n_att else ("diverged" if rng.random() < 0.05
                                                 else "completed")
            acc = None if status == "failed" else rng.uniform(0.1, 0.6)
            row = {
                "trial_id": tid, "attempt": a, "preset": "paper", "kind": kind,
                **cfg, "dataset": "cifar10", "image_size": 32, "train_size": 45000,
                "test_size": 10000, "status": status, "best_test_acc": acc, "test_acc": acc,
                "train_acc": None if acc is None else 1.0,
                "best_train_acc": None if acc is None else 1.0, "steps": 1000, "eta0": 1.0,
                "wall_s": 100.0, "error": "RuntimeError: node lost" if status == "failed"
                else None, "started_at": when, "finished_at": when + dt.timedelta(seconds=a),
                "code_version": "bench", "node": "n0", "host": "h0",
                "config_json": json.dumps(cfg), "metrics_json": json.dumps({"acc": acc})}
            # 4 points of one metric, as a worker reports them (step, value, measured time)
            history = [{"step": s, "test_acc": rng.random(), TIME_KEY: when_ms + 1000 * s}
                       for s in (250, 500, 750, 1000)]
            store.write_attempt(row, history)
            i += 1
            if i % 10000 == 0:
                print(f"  generated {i} attempts in {time.time() - t0:.0f} s", flush=True)
    store.write_manifest({"sweep": SWEEP, "preset": "paper", "trials": trials,
                          "success_train_acc": 0.95})
    open(marker, "w").close()


# ------------------------------------------------------------------ the three commands
def _quiet(fn: Callable[[], object]) -> float:
    """Seconds fn takes with stdout/stderr discarded. A command that exits non-zero (SystemExit
    or typer's Exit with a code) raises RuntimeError with its stderr: a broken command must
    stop the benchmark, not time as a fast one."""
    err = io.StringIO()
    t0 = time.perf_counter()
    code: object = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            fn()
        except SystemExit as ex:
            code = ex.code
        except Exception as ex:  # typer.Exit is an Exception subclass in recent click
            if type(ex).__name__ != "Exit":
                raise
            code = getattr(ex, "exit_code", 0)
    took = time.perf_counter() - t0
    if code not in (0, None):
        raise RuntimeError(f"command exited {code}: {err.getvalue().strip()[-500:]}")
    return took


def commands(root: str) -> dict[str, Callable[[], object]]:
    return {
        "status": lambda: cli.status(SWEEP, root),
        "query": lambda: cli.query("select t.arch, count(*), avg(t.best_test_acc), "
                                   "count(distinct h.trial_id) from trials t join history h "
                                   "using (trial_id, attempt) group by 1", root, [SWEEP],
                                   "csv"),
        "table": lambda: cli.table(SWEEP, root, "best_test_acc", "text", None, None),
    }


def use(reader: tuple) -> None:
    Store.read_trials_all, Store.read_history = reader


def measure(root: str, readers: dict[str, tuple], repeats: int) -> dict[str, dict[str, float]]:
    """{reader: {command: median seconds}}, readers interleaved inside each repeat."""
    times: dict[str, dict[str, list[float]]] = {r: {} for r in readers}
    for rep in range(repeats):
        for cmd, fn in commands(root).items():
            for rname, reader in readers.items():
                use(reader)
                s = _quiet(fn)
                times[rname].setdefault(cmd, []).append(s)
                print(f"  [{rep + 1}/{repeats}] {cmd:6s} {rname:9s} {s:8.3f} s   "
                      f"loadavg {_load()}", flush=True)
    use(NEW)
    return {r: {c: statistics.median(v) for c, v in d.items()} for r, d in times.items()}


def _load() -> str:
    return open("/proc/loadavg").read().split(" ", 3)[:3].__str__()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-old", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/symsweep-bench-store")
    ap.add_argument("--skip-big-loose", action="store_true")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: 40 / 20 attempts, 1 repeat, a fresh temporary cache "
                         "(removed afterwards); the same generation, readers and commands")
    a = ap.parse_args()
    if a.quick:
        a.n, a.n_old, a.repeats = 40, 20, 1
        with tempfile.TemporaryDirectory(prefix="symsweep-bench-store-") as tmp:
            a.cache = tmp
            run(a)
        return
    run(a)


def run(a: argparse.Namespace) -> None:
    """The whole benchmark for parsed arguments ``a`` (see the module docstring)."""
    small, big = f"{a.cache}/n{a.n_old}", f"{a.cache}/n{a.n}"
    if a.regenerate:
        shutil.rmtree(big, ignore_errors=True)
    print(f"loadavg at start {_load()} on {os.cpu_count()} CPUs", flush=True)
    generate(small, a.n_old)
    # both readers must see the same rows (the old one reads every column of TRIAL_SCHEMA, so
    # a small store cached before the schema gained a column would read as all corrupt)
    old_t, old_c = _old_read_trials_all(Store(small, SWEEP))
    new_t, new_c = Store(small, SWEEP).read_trials_all()
    if old_c or new_c or not old_t.num_rows == new_t.num_rows == a.n_old:
        raise SystemExit(f"{small}: old reader {old_t.num_rows} rows / {len(old_c)} corrupt, "
                         f"new {new_t.num_rows} / {len(new_c)}; delete it to regenerate")
    hist, hist_c = Store(small, SWEEP).read_history()
    if hist_c or hist.num_rows != 4 * a.n_old or hist["measured_at"].null_count:
        raise SystemExit(f"{small}: history has {hist.num_rows} rows (expected {4 * a.n_old}), "
                         f"{len(hist_c)} corrupt, {hist['measured_at'].null_count} without "
                         "measured_at; delete it to regenerate")
    for fn in commands(small).values():  # warm-up: imports (DuckDB, pandas, rich), untimed
        _quiet(fn)
    print(f"== {a.n_old} attempts, loose parts: old vs new reader, interleaved", flush=True)
    at_small = measure(small, {"old": OLD, "new": NEW}, a.repeats)
    t0 = time.time()
    generate(big, a.n)
    print(f"== {a.n} attempts ready ({time.time() - t0:.0f} s to generate; cached)", flush=True)
    compacted = any(x.startswith("compacted-") for x in os.listdir(f"{big}/{SWEEP}/trials"))
    big_loose = None
    if not compacted and not a.skip_big_loose:
        print(f"== {a.n} attempts, loose parts, new reader", flush=True)
        big_loose = measure(big, {"new": NEW}, 1)["new"]
    compact_s = None
    if not compacted:
        t0 = time.perf_counter()
        out = Store(big, SWEEP).compact()
        compact_s = time.perf_counter() - t0
        print(f"== compacted {out['attempts']} attempts in {compact_s:.1f} s "
              f"(loadavg {_load()})", flush=True)
    print(f"== {a.n} attempts, compacted, new reader", flush=True)
    big_comp = measure(big, {"new": NEW}, a.repeats)["new"]
    scale = a.n / a.n_old
    old_extrap = {c: v * scale for c, v in at_small["old"].items()}
    print("\n| attempts | reader | store | status s | query s | table s |\n"
          "|---|---|---|---|---|---|")
    rows = [(a.n_old, "old (per file)", "loose", at_small["old"]),
            (a.n_old, "new (one scan)", "loose", at_small["new"]),
            (a.n, "old (per file)", f"loose, EXTRAPOLATED x{scale:g}", old_extrap)]
    if big_loose:
        rows.append((a.n, "new (one scan)", "loose", big_loose))
    rows.append((a.n, "new", "compacted", big_comp))
    for n, r, s, t in rows:
        print(f"| {n} | {r} | {s} | {t['status']:.2f} | {t['query']:.2f} | {t['table']:.2f} |")
    took = f"{compact_s:.1f} s" if compact_s is not None else "done in an earlier run"
    print(f"compaction of {a.n} attempts: {took}; loadavg at end {_load()}")
    main_t = big_loose or big_comp
    print(json.dumps({"attempts": a.n, "status_s": round(main_t["status"], 3),
                      "query_s": round(main_t["query"], 3),
                      "table_s": round(main_t["table"], 3),
                      "store": "loose" if big_loose else "compacted",
                      "compacted": {k: round(v, 3) for k, v in big_comp.items()},
                      "compact_s": None if compact_s is None else round(compact_s, 1),
                      "old_at_n_extrapolated": {k: round(v, 1) for k, v in old_extrap.items()},
                      "n_old": a.n_old,
                      "at_n_old": {r: {k: round(v, 3) for k, v in d.items()}
                                   for r, d in at_small.items()}}))


if __name__ == "__main__":
    main()
