"""A paper-scale rehearsal of the driver: the Fig. 2 `paper` preset through the real driver
(Ray Tune, the Parquet store, the MLflow mirror, trial-keyed checkpoints), with the workers
replaced by no-op workers of the same interface, the driver SIGKILLed part-way, and the sweep
re-submitted the way `ray submit` would do it on a new cluster.

    .venv/bin/python benchmarks/rehearsal.py                     # all 330 trials of Fig. 2 paper
    .venv/bin/python benchmarks/rehearsal.py --kill-after 0.4    # kill when 40% have a row
    .venv/bin/python benchmarks/rehearsal.py --quick             # 24 of the trials (QUICK_ONLY)

What it measures and prints (last line: one JSON object):
- trials: every trial of the expansion (kernel cells, derived cells, finite runs);
- driver overhead per trial: (wall of both driver runs - time spent inside the no-op workers /
  CPUs) / trials launched; goal <= 0.5 s. The no-op workers sleep a few milliseconds per
  report, so almost all of the wall time is the driver's own (Tune scheduling, the store's
  writes and reads, the MLflow mirror, Ray start-up: Ray start-up is counted, as a user pays it);
- trials lost: trials without a finished (completed / diverged) row at the end (goal 0);
- trials run twice: trials with more than one finished row (goal 0);
- resumed from a checkpoint: finite trials whose finishing attempt started at a step > 0 (the
  ones the kill caught while running), read from the `start_step` column when it exists.

The no-op workers report three evaluations, with a checkpoint at each, so the checkpoint path
is exercised; their metrics are a hash of the config, so a re-run would give the same numbers.
The paper preset asks for GPUs: the rehearsal replaces each trial's resources by one CPU (and
no memory request), which is what this machine has.

``--quick`` (what ``make test`` runs) is the same rehearsal, kill and re-submission on the 24
trials ``--only`` QUICK_ONLY selects (vec and lcn, identity and shared_rotation, NTK and NN:
kernel cells derived and computed, finite runs with checkpoints), the no-op workers sleeping
QUICK_SLEEP a report so that the kill lands while trials run; its results go to a temporary
folder that is removed afterwards. Its overhead figure says nothing (two Ray start-ups over
21 trials).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# --quick: the trials of these --only selections, and the no-op workers' sleep per report
QUICK_ONLY = ("arch=vec,lcn", "transform=identity,shared_rotation", "inference=ntk,nn")
QUICK_SLEEP = 0.2

SWEEP_FILE = '''
"""Rehearsal: Fig. 2's paper preset with no-op workers (benchmarks/rehearsal.py writes this)."""
import dataclasses, hashlib, json, os, tempfile, time

from orchestrator.spec import Sweep
import importlib.util, sys

_spec = importlib.util.spec_from_file_location("_fig2_for_rehearsal", {fig2!r})
_fig2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fig2)

SLEEP = {sleep}
REPORTS = 3


def _h(config):
    key = json.dumps({{k: config[k] for k in ("arch", "transform", "seed", "inference")}})
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8


def noop_train(config, report=None):
    every = max(1, int(config["max_steps"]) // REPORTS)
    start = 0
    if config.get("resume_from"):
        with open(os.path.join(config["resume_from"], "state.json")) as f:
            start = json.load(f)["step"]
    t0 = time.perf_counter()
    for s in range(start + every, every * REPORTS + 1, every):
        time.sleep(SLEEP)
        with tempfile.TemporaryDirectory(prefix="noop-ck-") as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(dict(step=s), f)
            if report:
                report(dict(step=s, test_acc=_h(config), train_acc=1.0), d)
    acc = 0.2 + 0.5 * _h(config)
    return dict(status="completed", best_test_acc=acc, test_acc=acc, test_mse=1 - acc,
                val_acc=acc, train_acc=1.0, steps=every * REPORTS, eta0=0.5,
                worker_s=time.perf_counter() - t0)


def noop_kernel(config, report=None, map_tiles=None):
    t0 = time.perf_counter()
    time.sleep(SLEEP)
    acc = 0.3 + 0.3 * _h(config)
    if report:
        report(dict(step=0, test_acc=acc), None)
    return dict(status="completed", best_test_acc=acc, test_acc=acc, test_mse=0.5,
                train_acc=1.0, steps=0, worker_s=time.perf_counter() - t0)


_paper = _fig2.SWEEP.presets["paper"]
_cpu_only = dataclasses.replace(_paper, resources=dict(train=dict(cpu=1), kernel=dict(cpu=1)),
                                max_failures=1)
SWEEP = Sweep(name="rehearsal", description="Fig. 2 paper preset, no-op workers",
              axes=dict(_fig2.SWEEP.axes), presets=dict(paper=_cpu_only),
              workers=dict(train=noop_train, kernel=noop_kernel))

if __name__ == "__main__":
    from orchestrator.cli import script_main

    raise SystemExit(script_main(SWEEP))
'''


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _driver(sweep_file: Path, results: Path, log: Path, only: tuple[str, ...] = ()
            ) -> subprocess.Popen:
    cmd = [sys.executable, str(sweep_file), "--preset", "paper", "--results", str(results),
           "--no-progress", "--no-report", *(f"--only={o}" for o in only)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finished_rows(results: Path):
    from orchestrator.store import DONE_STATUSES, Store

    table, corrupt = Store(str(results), "rehearsal").read_trials_all()
    df = table.to_pandas()
    if corrupt:
        print(f"corrupt parts: {corrupt[:3]}", file=sys.stderr)
    return df[df["status"].isin(DONE_STATUSES)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-after", type=float, default=0.4,
                    help="SIGKILL the first driver once this fraction of trials has a row")
    ap.add_argument("--sleep", type=float, default=0.01,
                    help="seconds each no-op worker sleeps per report")
    ap.add_argument("--workdir", default=None, help="keep the results here (default: a tmp dir)")
    ap.add_argument("--quick", action="store_true",
                    help="the 24 trials of QUICK_ONLY, results in a temporary folder removed "
                         "afterwards (unless --workdir)")
    args = ap.parse_args()
    if not args.quick:
        return run(args, ())
    args.sleep = QUICK_SLEEP
    if args.workdir:
        return run(args, QUICK_ONLY)
    with tempfile.TemporaryDirectory(prefix="symsweep-rehearsal-quick-") as tmp:
        args.workdir = tmp
        return run(args, QUICK_ONLY, keep=True)


def run(args: argparse.Namespace, only: tuple[str, ...], keep: bool = False) -> int:
    """The rehearsal (module docstring) on the trials ``only`` selects (every trial: ()).
    ``keep``: use ``args.workdir`` as it is (do not empty it first)."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="symsweep-rehearsal-"))
    if work.exists() and args.workdir and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    sweep_file = work / "rehearsal.py"
    sweep_file.write_text(textwrap.dedent(SWEEP_FILE.format(
        fig2=str(REPO / "sweeps" / "fig2.py"), sleep=args.sleep)))
    results = work / "results"
    log = work / "driver.log"

    sys.path.insert(0, str(REPO))
    from orchestrator.spec import load_sweep, parse_only, select_trials

    sw = load_sweep(sweep_file)
    trials = select_trials(sw.expand("paper"), parse_only(list(only)))
    n_trials = len(trials)
    n_computed = sum(1 for t in trials if t.derived_from is None)
    print(f"load average before: {_load()}; {n_trials} trials ({n_computed} computed, "
          f"{n_trials - n_computed} derived); results under {results}", flush=True)

    # run 1: killed part-way (SIGKILL to the whole process group, as a lost head node would)
    from orchestrator.store import Store

    store = Store(str(results), "rehearsal")
    t0 = time.perf_counter()
    proc = _driver(sweep_file, results, log, only)
    target = int(args.kill_after * n_computed)
    while proc.poll() is None and len({p.trial_id for p in store.parts()}) < target:
        time.sleep(0.5)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wall1 = time.perf_counter() - t0
    rows1 = len({p.trial_id for p in store.parts()})
    print(f"run 1: {'killed' if killed else 'finished before the kill'} after {wall1:.1f} s "
          f"with {rows1} trials written; load {_load()}", flush=True)
    time.sleep(3)  # a real re-submission comes later still; let the dead driver's Ray go

    # run 2: the same command again, as `ray submit` on a new cluster would
    t1 = time.perf_counter()
    proc = _driver(sweep_file, results, log, only)
    rc = proc.wait()
    wall2 = time.perf_counter() - t1
    print(f"run 2: exit {rc} after {wall2:.1f} s; load {_load()}", flush=True)

    done = _finished_rows(results)
    expected = {t.trial_id for t in trials}
    per_trial = done.groupby("trial_id").size()
    lost = sorted(expected - set(per_trial.index))
    twice = sorted(per_trial[per_trial > 1].index)
    worker_s = 0.0
    for m in done["metrics_json"]:
        worker_s += float(json.loads(m or "{}").get("worker_s") or 0.0)
    launched = len(done[done["derived_from"].isna()])
    cpus = os.cpu_count() or 1
    overhead = (wall1 + wall2 - worker_s / cpus) / max(1, launched)
    resumed = None
    if "start_step" in done.columns:
        resumed = int((done["start_step"].fillna(0) > 0).sum())
    out = {"trials": n_trials, "computed": n_computed, "launched_rows": launched,
           "killed_after_rows": rows1, "wall_s": round(wall1 + wall2, 1),
           "driver_overhead_per_trial_s": round(overhead, 3), "trials_lost": len(lost),
           "trials_run_twice": len(twice), "resumed_from_checkpoint": resumed,
           "exit_code_resubmission": rc, "load_avg": _load()}
    if lost:
        print(f"lost: {lost[:10]}", file=sys.stderr)
    if twice:
        print(f"run twice: {twice[:10]}", file=sys.stderr)
    print(f"driver log: {log}")
    print(json.dumps(out))
    return 0 if not lost and not twice and rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
