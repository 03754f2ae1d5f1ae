"""The `symsweep` command.

Sub-commands live in small modules and are registered here; `main` turns every
`workers.errors.UserError` (and every usage error: an unknown flag, a missing argument) into
one line on stderr and exit code 2, so bad input never ends in a traceback.

Bad input is refused before anything is written: ``--only`` through `spec.select_trials`, an
unwritable ``--results`` before `run`/`resume` start, a missing results root before
`status`/`query`. `resume` never runs code a results folder names (`spec.load_recorded_sweep`),
and `query` runs read-only SQL on a connection without filesystem access (`readonly_sql`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import typer

from orchestrator.data_cli import app as data_app
from workers.errors import ConfigError, UserError
from workers.vocab import STATUSES, TRIAL_KINDS, Status

if TYPE_CHECKING:
    from orchestrator.spec import Sweep

app = typer.Typer(
    name="symsweep",
    help="Sweeps for 'Synergy and Symmetry in Deep Learning' on Ray: run, watch, resume, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")

RESULTS_HELP = "Results root: a directory or a pyarrow URI (s3://, gs://)."
_ONLY_OPT = typer.Option(None, help="Restrict to FIELD=V1,V2 (repeatable), e.g. --only "
                         "inference=ntk")
_SWEEPS_OPT = typer.Option(None, help="Only these sweeps (default: all)")
_SET_OPT = typer.Option(None, "--set", metavar="KEY=VALUE", help="Set a config key on every "
                        "trial (repeatable), e.g. --set max_steps=1000; VALUE is a Python literal "
                        "(64, 1e-3, True) or a bare word; checked like the sweep file, part of "
                        "the trial ids")
_PLAN_FILES = typer.Argument(..., help="Sweep file(s), e.g. sweeps/fig2.py")
_PLAN_ONLY = typer.Option(None, help="Restrict to FIELD=V1,V2 (repeatable), e.g. --only arch=vec")


@app.command("plan")
def plan(
    sweep_files: list[str] = _PLAN_FILES,
    preset: str = typer.Option("paper", help="smoke | cpu | paper"),
    gpus: int = typer.Option(8, help="GPUs for the wall-time estimate"),
    device_factor: float = typer.Option(1.0, help="How many times faster your GPU runs the "
                                        "same work than this machine (1: no scaling)"),
    steps: int = typer.Option(200, help="SGD steps to time per unit (fewer when slow)"),
    budget_s: float = typer.Option(30.0, "--budget-s", help="Seconds of timing per unit"),
    solve_n: int = typer.Option(1000, help="Training points of the timed regression solve"),
    only: list[str] = _PLAN_ONLY,
    set_: list[str] = _SET_OPT,
    units: str = typer.Option(None, help="Reuse units from a --save-units JSON file"),
    save_units: str = typer.Option(None, help="Write the measured units to this JSON file"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
    gpu_tflops: float = typer.Option(35.0, help="ImageNet sweeps: sustained TFLOP/s per GPU "
                                     "the FLOP counts are divided by (an assumption)"),
) -> None:
    """Projected compute and wall time of a sweep on N GPUs.

    Per figure and column, from unit costs measured on this machine (scaled by
    --device-factor); ImageNet sweeps are priced from FLOP counts at --gpu-tflops instead."""
    import json

    from orchestrator.plan import format_plans, load_units, make_plan
    from orchestrator.plan import save_units as write_units
    from orchestrator.plan.imagenet import is_imagenet, plan_imagenet
    from orchestrator.spec import load_sweep, parse_only, parse_overrides, select_trials

    if steps < 1 or budget_s <= 0 or solve_n < 2:
        raise ConfigError("need --steps >= 1, --budget-s > 0 and --solve-n >= 2")
    overrides = parse_overrides(set_)  # checked before any sweep is loaded or measured
    known = load_units(units) if units else {}
    plans = []
    if gpu_tflops <= 0:
        raise ConfigError(f"--gpu-tflops {gpu_tflops}: must be > 0")
    for f in sweep_files:
        sw = load_sweep(f).with_overrides(overrides)
        trials = select_trials(sw.expand(preset), parse_only(only))
        if is_imagenet(trials):  # priced from FLOP counts: a CPU step says little about a GPU
            print(plan_imagenet(sw.name, preset, trials, gpus=gpus, gpu_tflops=gpu_tflops))
            continue
        plans.append(make_plan(sw, preset, gpus=gpus, device_factor=device_factor,
                               steps=steps, budget_s=budget_s, solve_n=solve_n,
                               only=parse_only(only), units=known,
                               log=lambda m: print(f"symsweep plan: {m}", file=sys.stderr,
                                                   flush=True)))
        known.update(plans[-1].units)
    if save_units:
        write_units(known, save_units)
    if not plans:
        return
    if as_json:
        print(json.dumps([p.to_dict() for p in plans], default=str))
    else:
        print(format_plans(plans))


def _check_max_failures(max_failures: int | None) -> None:
    if max_failures is not None and max_failures < 0:
        raise ConfigError(f"--max-failures {max_failures}: retries per trial must be >= 0 "
                          "(0: no retry)")


def check_results_writable(results: str, sweep: str | None = None) -> None:
    """Refuse (`ConfigError`) a local results root that is a file or cannot be written, before
    `run`/`resume` write anything: a probe file is created and removed in ``<results>/<sweep>``
    (or the nearest directory that exists, where the root would be created). URIs (s3://,
    gs://) are checked by pyarrow when first written."""
    if "://" in results:
        return
    import tempfile

    root = os.path.abspath(os.path.expanduser(results))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"--results {results}: is a file, not a directory; pass a directory "
                          "(it is created if missing)")
    probe = os.path.join(root, sweep) if sweep and os.path.isdir(os.path.join(root, sweep)) \
        else root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"--results {results}: {probe} is a file, not a directory; pass a "
                          "directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".symsweep-write-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as ex:
        raise ConfigError(f"--results {results}: cannot write in {probe} ({ex.strerror}); pass "
                          "a writable directory") from ex


def check_results_exist(results: str, sweeps: list[str] | None = None) -> None:
    """Refuse (`ConfigError`) a results root that does not exist (a typo would read as 'no
    results') and named sweeps that are not under it. Read-only roots are fine."""
    import pyarrow.fs as pafs

    from orchestrator.fsio import resolve_root
    from orchestrator.store import list_sweeps

    fs, base = resolve_root(results)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise ConfigError(f"--results {results}: no such results directory; pass the root "
                          "that `symsweep run` wrote (or set SYMSWEEP_RESULTS)")
    if sweeps:
        have = list_sweeps(results)
        for s in sweeps:
            if s not in have:
                raise ConfigError(f"--sweep {s}: no such sweep under {results}; found: "
                                  f"{', '.join(have) or 'none'}")


def check_sweep_folder(results: str, sweep: str) -> None:
    """Refuse (`ConfigError`) a sweep with no folder under ``results`` (a typo), listing those
    there. A folder without a manifest counts: a driver writes its lock before it."""
    import pyarrow.fs as pafs

    from orchestrator.fsio import resolve_root
    from orchestrator.store import list_sweeps

    fs, base = resolve_root(results)
    if fs.get_file_info(f"{base}/{sweep}").type != pafs.FileType.Directory:
        raise ConfigError(f"no sweep '{sweep}' under {results}; found: "
                          f"{', '.join(list_sweeps(results)) or 'none'}")


INTERRUPTED = 130  # exit code of a run stopped by Ctrl-C: 128 + SIGINT, the shell's convention


def _print_summary(summary, console) -> None:
    # after a stop, "launched" counts trials that never started: say how many
    not_started = (summary.launched - summary.completed - summary.diverged - summary.failed -
                   summary.interrupted) if summary.stopped_by else 0
    console.print(
        f"{summary.total} trials: {summary.skipped} already finished, "
        f"{summary.launched} launched ({summary.completed} completed, {summary.diverged} "
        f"diverged, {summary.failed} failed, "
        f"{f'{summary.interrupted} interrupted, ' if summary.interrupted else ''}"
        f"{f'{not_started} not started, ' if not_started > 0 else ''}"
        f"{summary.retries} retries), "
        f"{summary.derived_written} derived rows written; kernel cells {summary.kernel_cells}, "
        f"computed {summary.kernel_computations}; wall {summary.wall_s:.1f} s")
    for n in summary.notes:
        console.print(f"note: {n}")


def _run(sweep, preset: str, results: str, address: str | None, mlflow_uri: str | None,
         dedupe: bool, max_failures: int | None, data_dir: str | None, cache_dir: str | None,
         only: dict | None, num_cpus: int | None, progress: bool, report: bool = True) -> int:
    from rich.console import Console

    from orchestrator.runner import run_sweep

    # markup off: a preset "[smoke]", a path or an error message is printed as written
    console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
    # progress: a live table on a terminal, plain periodic lines otherwise (SLURM, nohup)
    summary = run_sweep(sweep, preset, results=results, address=address, mlflow_uri=mlflow_uri,
                        dedupe=dedupe, max_failures=max_failures, data_dir=data_dir,
                        cache_dir=cache_dir, only=only, num_cpus=num_cpus,
                        progress=progress, console=console)
    _print_summary(summary, console)
    # A stop (SIGINT, SIGTERM, SIGUSR1, `symsweep stop`: orchestrator/stopping.py) ends the run
    # normally with trials unfinished: say so and fail with the shell's code for the signal
    # (128 + signum; 130 for `symsweep stop`), rather than print a partial table as if it were
    # all. A second signal raises instead (main: click's Abort, the same codes).
    unfinished = summary.launched - summary.completed - summary.diverged - summary.failed
    if unfinished > 0 and summary.stopped_by:
        console.print(f"stopped by {summary.stopped_by}: {unfinished} of {summary.launched} "
                      f"trials did not finish ({summary.interrupted} stopped in flight after a "
                      f"checkpoint, recorded as interrupted; {unfinished - summary.interrupted} "
                      f"not started); `symsweep resume {sweep.name} --results {results}` "
                      f"continues them (exit code {summary.exit_code})")
    elif unfinished > 0:
        console.print(f"{unfinished} of {summary.launched} launched trials did not finish "
                      f"(interrupted); `symsweep resume {sweep.name} --results {results}` "
                      "runs only those")
    if report:
        try:
            table(sweep.name, results, "best_test_acc", "text")
            plot(sweep.name, results, None, "best_test_acc")
        except ConfigError as ex:  # e.g. nothing finished
            console.print(f"no table: {ex}")
    if unfinished > 0:
        return summary.exit_code or INTERRUPTED
    return 0 if summary.failed == 0 else 1


@app.command()
def run(
    sweep_file: str = typer.Argument(..., help="Sweep file, e.g. sweeps/fig2.py"),
    preset: str = typer.Option("smoke", help="smoke | cpu | paper"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    address: str = typer.Option(None, envvar="RAY_ADDRESS",
                                help="Ray address ('auto' on a cluster); default: "
                                "start a Ray of symsweep's own on this machine, never one "
                                "`ray start` left running"),
    mlflow_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                   help="MLflow tracking URI (default: mlflow.db, SQLite, "
                                   "in the results root)"),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Compute every kernel cell, "
                                   "even those Theorem 4.1 makes equal"),
    max_failures: int = typer.Option(None, help="Retries per trial (default: the preset's)"),
    data_dir: str = typer.Option(None, help="CIFAR-10 directory (cpu / paper presets)"),
    cache_dir: str = typer.Option(None, help="Dataset cache directory"),
    only: list[str] = _ONLY_OPT,
    set_: list[str] = _SET_OPT,
    num_cpus: int = typer.Option(None, help="CPUs for embedded Ray (default: all)"),
    progress: bool = typer.Option(True, help="Progress: a live table on a terminal, plain "
                                  "periodic lines otherwise (SLURM, nohup logs)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list, run nothing"),
    report: bool = typer.Option(True, help="Print the table and write the plot at the end"),
) -> None:
    """Run a sweep (or the unfinished part of it) as Ray Tune trials."""
    from orchestrator.spec import (
        count_kernel_computations,
        load_sweep,
        parse_only,
        parse_overrides,
        select_trials,
    )

    _check_max_failures(max_failures)
    overrides = parse_overrides(set_)
    sweep = load_sweep(sweep_file).with_overrides(overrides)
    sweep.preset(preset)
    sel = parse_only(only)
    # the whole validation (ranges, selection) before anything is written or started
    trials = select_trials(sweep.expand(preset, dedupe=not no_dedupe), sel)
    if dry_run:
        cells, comps = count_kernel_computations(trials)
        kinds = {k: sum(t.kind == k for t in trials) for k in sorted(TRIAL_KINDS)}
        sets = "".join(f" --set {k}={v!r}" for k, v in sweep.overrides.items())
        print(f"{sweep.name} [{preset}]{sets}: {len(trials)} trials ({kinds['kernel']} kernel "
              f"cells, {kinds['train']} finite runs); kernel computations {comps} of {cells}")
        raise typer.Exit(0)
    check_results_writable(results, sweep.name)
    code = _run(sweep, preset, results, address, mlflow_uri, not no_dedupe, max_failures,
                data_dir, cache_dir, sel, num_cpus, progress, report)
    raise typer.Exit(code)


@app.command()
def resume(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    address: str = typer.Option(None, envvar="RAY_ADDRESS",
                                help="Ray address ('auto' on a cluster)"),
    mlflow_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                   help="MLflow tracking URI"),
    max_failures: int = typer.Option(None, help="Retries per trial"),
    num_cpus: int = typer.Option(None, help="CPUs for embedded Ray"),
    progress: bool = typer.Option(True, help="Live progress view"),
    report: bool = typer.Option(True, help="Print the table and write the plot at the end"),
    sweep_file: str = typer.Option(None, "--sweep-file", help="The sweep file to resume with "
                                   "(default: the repository's sweeps/SWEEP.py); its sha256 "
                                   "must match the one recorded at run time"),
    force: bool = typer.Option(False, "--force", help="Resume even when the sweep file's "
                               "sha256 differs from the recorded one"),
) -> None:
    """Finish SWEEP: re-run the trials of its last `run` not yet done.

    Only trials with no finished attempt run again, with the preset, selection and overrides
    that `run` recorded.

    The sweep is loaded from the repository's sweeps/SWEEP.py (or --sweep-file), never from the
    file the results folder names: a results folder is data, not code."""
    from orchestrator.spec import load_recorded_sweep, parse_only, select_trials

    _check_max_failures(max_failures)
    if not sweep.isidentifier():
        raise ConfigError(f"sweep name {sweep!r}: expected a name like fig2")
    m = _manifest_or_fail(results, sweep)
    # the recorded --set values (checked again: a results folder is data)
    sw = load_recorded_sweep(sweep, m, sweep_file, force=force).with_overrides(
        m.get("overrides") or {})
    preset = str(m.get("preset"))
    sw.preset(preset)
    only = m.get("only") or None
    if only is not None and not isinstance(only, dict):  # an `only` list as typed on the CLI
        only = parse_only(only)
    select_trials(sw.expand(preset, dedupe=bool(m.get("dedupe", True))), only)
    check_results_writable(results, sweep)
    code = _run(sw, preset, results, address, mlflow_uri, bool(m.get("dedupe", True)),
                max_failures, m.get("data_dir"), m.get("cache_dir"), only, num_cpus,
                progress, report)
    raise typer.Exit(code)


@app.command()
def stop(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    wait: bool = typer.Option(False, "--wait", help="Return only once the driver has "
                              "released its lock"),
    timeout: float = typer.Option(None, help="With --wait: give up after this many seconds "
                                  "(exit code 1)"),
) -> None:
    """Ask the running driver of SWEEP to stop cleanly, from any host.

    The same as SIGINT, SIGTERM or SIGUSR1 to the driver: no new trial starts, the trials in
    flight write a checkpoint and are recorded as interrupted (not failed), the driver releases
    its lock and exits with code 130 (after a signal: 128 + the signal, 130, 143 or 138). A
    second signal stops it at once. `symsweep resume SWEEP` continues from there.

    Works wherever the results root is seen: a driver in a tmux session, a Ray Job or a SLURM
    job on another machine. When no driver runs the sweep, says so (exit code 2)."""
    from orchestrator.layout import ResultsLayout
    from orchestrator.stopping import stop_driver, wait_stopped

    if not sweep.isidentifier():
        raise ConfigError(f"sweep name {sweep!r}: expected a name like fig2 (the sweep's "
                          "name, not its file)")
    if timeout is not None and (not wait or not timeout >= 0):
        raise ConfigError(f"--timeout {timeout:g}: " + ("seconds >= 0" if wait else
                          "only with --wait (how long to wait for the driver to stop)"))
    check_results_exist(results)
    check_sweep_folder(results, sweep)
    layout = ResultsLayout(results, sweep)
    lock = stop_driver(layout)
    print(f"asked the driver of '{sweep}' (pid {lock.get('pid')} on host {lock.get('host')}) "
          "to stop: no new trial starts, the trials in flight checkpoint and stop (within the "
          "driver's SYMSWEEP_STOP_GRACE_S, default 120 s), then it exits with code 130; "
          f"`symsweep resume {sweep} --results {results}` continues")
    if wait:
        if not wait_stopped(layout, str(lock["token"]), timeout):
            print(f"the driver still runs after {timeout:g} s", file=sys.stderr)
            raise typer.Exit(1)
        print("the driver has stopped")


def _manifest_or_fail(results: str, sweep: str) -> dict:
    """The sweep's manifest; a damaged one is rebuilt from the sweep file when unambiguous
    (written back when the folder is writable), else ConfigError naming the repair."""
    from orchestrator.store import ManifestDamagedError, Store

    check_results_exist(results)
    try:
        return Store(results, sweep).manifest_or_fail()
    except ManifestDamagedError as damage:
        from orchestrator.repair import rebuild_manifest

        try:
            check_results_writable(results, sweep)
            writable = True
        except ConfigError:
            writable = False
        return rebuild_manifest(results, sweep, damage, write=writable)


@app.command("ls")
def ls_sweeps(
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
) -> None:
    """List the sweeps under a results root and how far each got.

    For each sweep: its preset, its trials (finished / failed / missing) and its live driver,
    if one runs."""
    from orchestrator.driver_lock import lock_is_live
    from orchestrator.store import (
        DONE_STATUSES,
        ManifestDamagedError,
        Store,
        list_sweeps,
        warn_corrupt,
    )

    check_results_exist(results)
    names = list_sweeps(results)
    if not names:
        print(f"no sweeps under {results} yet; start one with `symsweep run sweeps/fig2.py`")
        return
    # every sweep read before anything is printed: an unreadable one is an error alone
    lines = [f"{'sweep':<12} {'preset':<7} {'trials':>7} {'finished':>9} {Status.FAILED:>7} "
             f"{'missing':>8}  driver"]
    for name in names:
        store = Store(results, name)
        try:
            m = store.read_manifest() or {}
        except ManifestDamagedError as ex:  # one broken sweep never hides the others
            print(f"symsweep: warning: {ex}", file=sys.stderr)
            m = None
        ids = {t["trial_id"] for t in (m or {}).get("trials", [])}
        df, corrupt = store.latest()
        warn_corrupt(corrupt)
        df = df[df["trial_id"].isin(ids)] if ids else df
        done = int(df["status"].isin(DONE_STATUSES).sum())
        failed = int((df["status"] == Status.FAILED).sum())
        lock_state = store.driver_lock.state()
        lock = lock_state.lock
        drv = "-" if not lock else ("LIVE pid {pid} on {host}" if lock_is_live(lock)
                                    else "stale lock (pid {pid} on {host})").format(**{
                                        "pid": lock.get("pid"), "host": lock.get("host")})
        if lock_state.damaged:
            drv = f"damaged lock ({lock_state.damaged})"
        if m is None:  # damaged manifest: what the parts hold, trials unknown
            lines.append(f"{name:<12} {'?':<7} {'?':>7} {done:>9} {failed:>7} {'?':>8}  {drv}")
            continue
        lines.append(f"{name:<12} {m.get('preset', '?'):<7} {len(ids):>7} {done:>9} "
                     f"{failed:>7} {max(0, len(ids) - done - failed):>8}  {drv}")
    print("\n".join(lines))


@app.command()
def status(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
) -> None:
    """Done, failed and missing trials of SWEEP.

    Also names the sweep's live driver, if one runs, and any corrupt part file."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from orchestrator.driver_lock import lock_is_live
    from orchestrator.store import Store

    m = _manifest_or_fail(results, sweep)
    store = Store(results, sweep)
    df, corrupt = store.latest()
    # history files too, before anything is printed (a compacted file that does not parse is
    # a ConfigError naming it, alone): a corrupt part loses learning curves (README: status
    # names corrupt files)
    _, hist_corrupt = store.read_history()
    # status per trial only: a dict per row (df.to_dict) took 3 of 4.7 s at 10^5 attempts
    status_of = dict(zip(df["trial_id"], df["status"], strict=True))
    # running: an attempt in flight (its marker, newer than the trial's rows, under a live
    # driver), whatever an earlier attempt ended as
    running = store.running_trials(dict(zip(df["trial_id"], df["attempt"], strict=True)))
    status_of.update(dict.fromkeys(running, "running"))
    counts = {**dict.fromkeys(STATUSES, 0), "running": 0, "missing": 0}
    per_kind: dict[str, dict[str, int]] = {}
    derived = 0
    for t in m["trials"]:
        st = status_of.get(t["trial_id"], "missing")
        counts[st] = counts.get(st, 0) + 1
        per_kind.setdefault(t["kind"], {}).setdefault(st, 0)
        per_kind[t["kind"]][st] += 1
        derived += bool(t.get("derived_from"))
    # "[smoke]", errors: printed as written, one line each (never wrapped: grep finds them)
    con = Console(markup=False, highlight=False, soft_wrap=True)
    tab = Table(title=Text(f"{sweep} [{m['preset']}] under {results}"))
    for c in ("kind", *counts, "total"):
        tab.add_column(c, justify="right")
    for kind, c in sorted(per_kind.items()):
        tab.add_row(kind, *(str(c.get(k, 0)) for k in counts), str(sum(c.values())))
    tab.add_row("all", *(str(v) for v in counts.values()), str(len(m["trials"])))
    con.print(tab)
    con.print(f"{derived} {'trial is a copy' if derived == 1 else 'trials are copies'} of an "
              "equal kernel cell (derived_from)")
    extra = set(status_of) - set(running) - {t["trial_id"] for t in m["trials"]}
    if extra:
        con.print(f"{len(extra)} {'trial' if len(extra) == 1 else 'trials'} in the store "
                  f"{'is' if len(extra) == 1 else 'are'} not in the last expansion")
    lock_state = store.driver_lock.state()
    if lock_state.lock:
        lock = lock_state.lock
        live = lock_is_live(lock)
        con.print(f"driver lock: pid {lock.get('pid')} on {lock.get('host')}, started "
                  f"{lock.get('started_at')} ({'LIVE' if live else 'stale: dead driver'})")
        from orchestrator.stopping import read_stop

        req = read_stop(store.layout)
        if live and req and req.get("token") == lock.get("token"):
            ago = time.time() - float(req.get("requested_at") or time.time())
            con.print(f"stopping: asked by {req.get('by')} {ago:.0f} s ago; the trials in "
                      "flight checkpoint and stop, then the driver exits")
    elif lock_state.damaged:
        con.print(f"driver lock {store.lock_path} is DAMAGED ({lock_state.damaged}): it names "
                  "no driver; the next `symsweep resume` takes it over")
    for path, why in store.damaged_inflight():
        con.print(f"damaged in-flight file {path} ({why}): not counted; the next `symsweep "
                  "resume` records its attempt as failed without it and removes it")
    failed = df[(df["status"] == Status.FAILED) & ~df["trial_id"].isin(list(running))]
    for r in failed.head(10).itertuples():
        con.print(f"failed {r.trial_id} ({r.inference} {r.arch} {r.transform} s{r.seed}) "
                  f"attempt {r.attempt}: {r.error}")
    bad = [(f"{store.trials_dir}/{n}", e) for n, e in corrupt] + \
        [(f"{store.history_dir}/{n}", e) for n, e in hist_corrupt]
    if bad:
        # a trial whose trial part reads is done: resume recomputes a lost history only
        # when the trial part of the same name goes too
        also = (", a history part with the trial part of the same name in "
                f"{store.trials_dir}," if hist_corrupt else "")
        print(f"{len(bad)} CORRUPT part file(s), not read (delete them{also} and run "
              f"`symsweep resume {sweep}` to recompute):")
        for path, err in bad:
            print(f"  {path}: {err}")
        raise typer.Exit(1)


@app.command()
def show(
    trial_id: str = typer.Argument(..., help="Trial id, or its first characters if no other "
                                   "trial's id starts with them"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    sweep: str = typer.Option(None, help="Look only in this sweep (default: every sweep)"),
) -> None:
    """One trial: config, attempts, history and checkpoints.

    Prints the trial's config, every attempt (status, start step, metrics, error,
    traceback, log), its metrics history, the end of its latest attempt's log and the
    checkpoints on disk."""
    from orchestrator.trial_report import trial_report

    check_results_exist(results, [sweep] if sweep else None)
    print(trial_report(results, trial_id, sweep))


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over views trials (latest attempt per trial), "
                              "trials_all, history"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    sweep: list[str] = _SWEEPS_OPT,
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
) -> None:
    """Run read-only SQL (SELECT / EXPLAIN) with DuckDB over the results."""
    import duckdb

    from orchestrator.store import connect, warn_corrupt

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format {fmt!r}: choose table, csv or json")
    check_results_exist(results, sweep or None)
    con, corrupt = connect(results, sweep or None)
    warn_corrupt(corrupt)
    try:
        df = readonly_sql(con, sql, results).df()
    except duckdb.Error as ex:
        raise ConfigError(f"query failed: {str(ex).splitlines()[0]}") from ex
    if fmt == "csv":
        print(df.to_csv(index=False), end="")
    elif fmt == "json":
        print(df.to_json(orient="records", date_format="iso"))
    elif fmt == "table":
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50,
                               "display.width", 200):
            print(df.to_string(index=False))
    else:
        raise ConfigError(f"--format {fmt!r}: choose table, csv or json")


# Statements `query` runs: reads only (a COPY, ATTACH, INSTALL, CREATE, SET, ... is refused).
QUERY_STATEMENTS = ("SELECT", "EXPLAIN")


def readonly_sql(con, sql: str, results: str):
    """Execute ``sql`` on ``con`` (views over the store already created) as a read-only query.

    Two independent guards, because the results may be shared and the SQL typed by anyone:
    every statement must be a SELECT or EXPLAIN (DuckDB's own parser tells, so a COPY ... TO
    hidden after a ``;`` is seen), and the connection loses filesystem access
    (``enable_external_access = false``: no COPY TO, ATTACH, INSTALL / LOAD, reading other
    files) except reading the local results root (``allowed_directories``, for views that read
    Parquet files at query time), and the configuration is locked so the SQL cannot undo it.
    Returns the DuckDB relation of the last statement; raises `ConfigError` for a refused one.
    """
    import duckdb

    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as ex:
        raise ConfigError(f"query failed: {str(ex).splitlines()[0]}") from ex
    if not stmts:
        raise ConfigError("query: empty SQL; e.g. 'select * from trials limit 5'")
    for st in stmts:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in QUERY_STATEMENTS:
            raise ConfigError(f"query: {kind} statements are refused; queries are read-only "
                              "(SELECT / EXPLAIN over trials, trials_all, history)")
    root = results if "://" in results else os.path.abspath(os.path.expanduser(results))
    con.execute("set allowed_directories = ?", [[root.rstrip("/") + "/"]])
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")
    return con.execute(sql)


def metrics() -> list[str]:
    """Columns `table` / `plot` can aggregate: the numeric result columns of a trial row."""
    import pyarrow as pa

    from orchestrator.store import TRIAL_SCHEMA

    return [f.name for f in TRIAL_SCHEMA if pa.types.is_floating(f.type)] + ["steps"]


def _check_metric(metric: str) -> None:
    if metric not in metrics():
        raise ConfigError(f"--metric {metric!r}: not a result column; choose from "
                          f"{', '.join(metrics())}")


_FIT_FIRST_OPT = typer.Option(None, help="Learning curves (fig4, figS6): points in the first "
                              "power-law segment (default: the sweep file's)")
_FIT_LAST_OPT = typer.Option(None, help="Learning curves: points in the last segment")


def _fit_opts(first: object, last: object) -> dict:
    """Segment lengths given on the command line (ints; anything else, e.g. when a command is
    called as a function with its defaults, means 'the sweep file's default')."""
    return {k: v for k, v in (("first", first), ("last", last)) if isinstance(v, int)}


@app.command()
def table(
    sweep: str = typer.Argument("fig2", help="Sweep name"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    metric: str = typer.Option("best_test_acc", help="Column to aggregate (Fig. 2 layout)"),
    fmt: str = typer.Option("text", "--format", help="text | csv"),
    fit_first: int = _FIT_FIRST_OPT,
    fit_last: int = _FIT_LAST_OPT,
) -> None:
    """The paper's table of a sweep.

    The layout is the sweep's own (orchestrator/figures/<sweep>.py); a sweep without one gets
    Fig. 2's: the mean ± std, in %, of the metric over successful seeds."""
    from orchestrator.figures import figure_table

    _check_metric(metric)
    check_results_exist(results)
    print(figure_table(sweep, results, fmt=fmt, metric=metric,
                       **_fit_opts(fit_first, fit_last)), end="")


@app.command()
def plot(
    sweep: str = typer.Argument(None, help="Sweep name (default fig2), or a trial id for its "
                                "learning curve"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
    out: str = typer.Option(None, help="Figure path, .png, .pdf or .svg; the other two are "
                            "written next to it (default <results>/<sweep>/<sweep>.png)"),
    metric: str = typer.Option("best_test_acc", help="Column to plot (Fig. 2 layout)"),
    fit_first: int = _FIT_FIRST_OPT,
    fit_last: int = _FIT_LAST_OPT,
    curves: str = typer.Option(None, help="Trial id (or a unique prefix): draw its learning "
                               "curve (loss, accuracy against the step) instead"),
) -> None:
    """The paper's figure of a sweep, or one trial's learning curve.

    The figure is the sweep's own (orchestrator/figures/<sweep>.py); a sweep without one gets
    Fig. 2's bars. It is written as PNG, PDF and SVG. Given a trial id (`plot TRIAL_ID` or
    `plot SWEEP --curves TRIAL_ID`), draws that trial's learning curve instead."""
    from orchestrator.figures import plot_any
    from orchestrator.figures.common import outputs

    _check_metric(metric)
    check_results_exist(results)
    path = plot_any(sweep, results, out, curves=curves if isinstance(curves, str) else None,
                    metric=metric, **_fit_opts(fit_first, fit_last))
    also = ", ".join("." + p.rsplit(".", 1)[1] for p in outputs(path)[1:])
    print(f"wrote {path} (and {also} next to it)")


@app.command()
def compact(
    sweep: str = typer.Argument(..., help="Sweep name, e.g. fig2"),
    results: str = typer.Option("results", envvar="SYMSWEEP_RESULTS", help=RESULTS_HELP),
) -> None:
    """Fold SWEEP's finished part files into one file per directory.

    Optional: it makes status, query and table fast at 10^5 attempts. Every attempt row is
    kept. Refused while a driver runs the sweep."""
    from orchestrator.store import Store

    _manifest_or_fail(results, sweep)
    check_results_writable(results, sweep)
    store = Store(results, sweep)
    out = store.compact()
    print(f"{sweep}: folded {out['attempts']} attempt part(s) and {out['history_parts']} "
          f"history part(s) into {len(out['written'])} file(s), deleted {out['deleted']} "
          "folded part file(s)")
    for f in out["written"]:
        print(f"  wrote {f}")
    if out["corrupt"]:
        print(f"{len(out['corrupt'])} CORRUPT file(s) left in place (see `symsweep status "
              f"{sweep}`)", file=sys.stderr)
        raise typer.Exit(1)


def prose_help(text: str) -> str:
    """A docstring as help the CLI can wrap: the lines of each paragraph (paragraphs are
    separated by blank lines) joined into one line, since typer's rich help keeps a
    docstring's hard line breaks and so prints ragged lines at any terminal width. A paragraph
    that starts with ``\\b`` is kept as written (without the marker), as click would."""
    import inspect

    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            out.append(para[1:].lstrip("\n"))
        else:
            out.append(" ".join(ln.strip() for ln in para.splitlines()))
    return "\n\n".join(out)


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help (its docstring, or help=) through `prose_help`, sub-apps too."""
    for info in typer_app.registered_commands:
        doc = info.help if info.help is not None else (info.callback.__doc__ or "")
        info.help = prose_help(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)  # after every command above is registered


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException classes, Abort classes) of every click the installed typer may raise:
    typer >= 0.26 bundles its own (``typer._click``), older ones use ``click``."""
    import importlib

    errors: list[type] = []
    aborts: list[type] = [typer.Abort] if hasattr(typer, "Abort") else []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        errors += [c for c in (getattr(mod, "ClickException", None),) if isinstance(c, type)]
        aborts += [c for c in (getattr(mod, "Abort", None),) if isinstance(c, type)]
    return tuple(errors), tuple(aborts)


def _usage_line(ex: Exception) -> str:
    """One line for a usage error: the message and where to get help."""
    msg = ex.format_message() if hasattr(ex, "format_message") else str(ex)
    ctx = getattr(ex, "ctx", None)
    where = getattr(ctx, "command_path", None) or "symsweep"
    return f"symsweep: error: {' '.join(str(msg).split())} (see `{where} --help`)"


def script_main(sweep: Sweep, argv: list[str] | None = None) -> int:
    """Run a sweep file as a script, ``python sweeps/fig2.py --preset smoke`` (what ``ray submit``
    does): the same as ``symsweep run sweeps/fig2.py --preset smoke``. A sweep file ends with

        if __name__ == "__main__":
            from orchestrator.cli import script_main
            raise SystemExit(script_main(SWEEP))
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    source = sweep.source or getattr(sys.modules.get("__main__"), "__file__", None)
    if source is None:
        print(f"error: sweep '{sweep.name}': cannot tell which file defines it; run "
              "`symsweep run <file>`", file=sys.stderr)
        return 2
    return main(["run", str(source), *args])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    click_errors, aborts = _click_exception_types()
    try:
        rv = app(args=argv, prog_name="symsweep", standalone_mode=False)
    except UserError as err:
        print(f"symsweep: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as ex:
        return ex.exit_code
    except SystemExit as ex:  # click's --help / exits
        return int(ex.code or 0)
    except click_errors as ex:  # unknown flag, missing argument, bad value: one line, exit 2
        print(_usage_line(ex), file=sys.stderr)
        return int(getattr(ex, "exit_code", 2) or 2)
    except aborts as ex:  # Ctrl-C outside a run, or a second stop signal (stopping.StopNow)
        print("Aborted.", file=sys.stderr)
        return int(getattr(ex.__cause__, "exit_code", INTERRUPTED))
    except OSError as ex:  # a full disk under any command: one line, not a traceback
        from orchestrator.fsio import disk_full_error

        full = disk_full_error(ex, os.environ.get("SYMSWEEP_RESULTS", "results"))
        if full is None:
            raise
        print(f"symsweep: error: {full}", file=sys.stderr)
        return full.exit_code
    # with standalone_mode=False click returns the code of a `typer.Exit(code)` instead of
    # raising it
    return rv if isinstance(rv, int) else 0


def console() -> None:
    """Console-script wrapper: exit with `main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
