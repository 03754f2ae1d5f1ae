"""The Tune driver: run a sweep's trials as Ray Tune trials, resume, lock, clean up.

Flow of `run_sweep`:
1. expand the sweep (spec.py), take the driver lock of the sweep under the results root;
2. write derived rows whose source already finished, and skip every trial with a finished
   (completed / diverged) attempt: this is resume;
3. start a Ray of its own (or join ``address``: raynode.py) and run the remaining trials as one Tune
   experiment of function trainables. Each trial calls its worker
   (``workers.train.train`` or ``workers.kernel_trial.run_kernel_trial``) with a ``report``
   callback that forwards metrics to ``ray.tune.report``. A finite trial's checkpoints go
   to the trial-keyed store under the results root (checkpoints.py), so every later attempt
   (a Tune retry, ``FailureConfig(max_failures)``; ``symsweep resume``; the same sweep
   submitted again on a new cluster) continues from the trial's latest complete checkpoint;
4. every attempt, failed ones included, writes its own Parquet part file from inside the
   trial (store.py), so a killed driver loses no finished trial; the driver mirrors the part
   files to MLflow (tracking.py) and shows live progress.

One attempt of a trial is orchestrator/trial.py (also fault injection); kernel tiles and their
cache are orchestrator/tiles.py. SIGINT, SIGTERM, SIGUSR1 and `symsweep stop` stop a sweep
cleanly (orchestrator/stopping.py): no new trial starts, the trials in flight checkpoint and
are recorded as interrupted, the lock is released, `RunSummary.stopped_by` says what stopped it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.checkpoints import clear_tune_state
from orchestrator.context import RunContext
from orchestrator.driver_lock import STALE_AFTER_S
from orchestrator.fsio import disk_full_error
from orchestrator.layout import ResultsLayout
from orchestrator.raynode import check_address, ensure_ray, stop_reaper
from orchestrator.resources import (
    may_autoscale,
    memory_requests,
    node_memory,
    trial_resources,
    unschedulable,
)
from orchestrator.spec import (
    Sweep,
    Trial,
    count_kernel_computations,
    file_sha256,
    select_trials,
)
from orchestrator.stopping import StopControl, clear_stop, grace_seconds
from orchestrator.store import Store, now_utc
from orchestrator.tiles import ship_by_value
from orchestrator.trial import execute_trial, materialize_derived, tune_trainable
from workers.durable import disk_full
from workers.errors import ConfigError, DiskFullError, UserError
from workers.registry import worker_for
from workers.vocab import FULL_COV_ARCHS, Status

log = logging.getLogger("symsweep")


# ====================================================================== driver
def code_version() -> str:
    """``<git short hash>[-dirty]`` of the checkout this code runs from; when git cannot say,
    ``unknown (<why>)`` (e.g. not a git checkout) and a warning, so rows never claim a version
    silently."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                           capture_output=True, timeout=5)
        rev = p.stdout.strip()
        if p.returncode != 0 or not rev:
            why = (p.stderr.strip().splitlines() or [f"git exit code {p.returncode}"])[-1]
            raise RuntimeError("not a git checkout" if "not a git repository" in why else why)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, timeout=5).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except Exception as ex:
        why = str(ex) if isinstance(ex, RuntimeError) else f"{type(ex).__name__}: {ex}"
        why = " ".join(why.split())[:120]
        log.warning("code version unknown (%s): rows record code_version 'unknown (%s)'", why,
                    why)
        return f"unknown ({why})"


HEARTBEAT_S = 30.0  # the driver refreshes its lock this often
LOCK_STALE_S = STALE_AFTER_S  # another host may take the lock after this (driver_lock)


class LockLostError(UserError):
    """The driver could not keep its lock (another driver could take the sweep over): the
    sweep was stopped; finished trials are kept, `symsweep resume` continues."""

    exit_code = 3


@dataclass
class RunSummary:
    total: int
    skipped: int
    launched: int
    derived_written: int
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    retries: int = 0
    wall_s: float = 0.0
    kernel_cells: int = 0
    kernel_computations: int = 0
    interrupted: int = 0  # trials that stopped (or never started) on a stop request
    stopped_by: str | None = None  # SIGINT / SIGTERM / SIGUSR1 / "symsweep stop"
    exit_code: int = 0  # of a stopped run: 128 + the signal (stopping.exit_code_for)
    notes: list[str] = field(default_factory=list)


def _ray_env(trials: list[Trial]) -> dict[str, str]:
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if all(t.resources.get("gpu", 0) == 0 and t.resources.get("tile_gpu", 0) == 0
           for t in trials):
        threads = max(1, int(min((t.resources.get("cpu", 1) for t in trials), default=1)))
        # No XLA flag limits JAX's CPU threads (cpus.py): each trial pins itself to the
        # cores it claims (tune_trainable), and XLA's pool follows. This flag only keeps
        # Eigen's matmuls in one thread for 1-CPU trials (the same numbers on every attempt,
        # even one that ran unpinned).
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
        env["OMP_NUM_THREADS"] = str(threads)
        env["JAX_PLATFORMS"] = "cpu"
    return env


def check_image_folders(trials: list, data_dir: str | None = None) -> None:
    """Every ImageNet-layout folder the trials will read exists and has its splits, checked
    once per folder before the lock, the manifest or Ray (``data_dir``: the --data-dir
    override, which replaces each trial's own). A missing folder would otherwise fail every
    trial one by one on the cluster. Raises `workers.errors.DataError` (one line)."""
    from workers.errors import DataError
    from workers.imagenet import check_data_dir

    dirs = {data_dir or str(t.config.get("data_dir") or "") for t in trials
            if t.config.get("dataset") == "imagenet"}
    if "" in dirs:
        raise DataError("these ImageNet trials name no image folder: pass --data-dir <root> "
                        "(the folder holding train/<wnid>/ and val/<wnid>/)")
    for d in sorted(dirs):
        check_data_dir(d)


def run_sweep(sweep: Sweep, preset: str, *, results: str = "results", address: str | None = None,
              mlflow_uri: str | None = None, dedupe: bool = True,
              max_failures: int | None = None, data_dir: str | None = None,
              cache_dir: str | None = None, only: Mapping[str, list[str]] | None = None,
              progress: bool = True, num_cpus: int | None = None,
              fault: Mapping[str, Any] | None = None, tracking: bool = True,
              console: Any = None) -> RunSummary:
    """Run (or resume) ``sweep`` at ``preset``: everything without a finished attempt.

    Bad input (an unknown or empty ``only`` selection, a config value out of range, a negative
    ``max_failures``) raises `ConfigError` before the driver lock, the manifest or Ray."""
    t_start = time.time()
    if max_failures is not None and (isinstance(max_failures, bool) or max_failures < 0):
        raise ConfigError(f"--max-failures {max_failures}: retries per trial must be >= 0")
    trials = select_trials(sweep.expand(preset, dedupe=dedupe), only)
    for t in trials:  # paths in a preset are relative to where the driver runs
        for k in ("data_dir", "cache_dir"):
            v = t.config.get(k)
            if isinstance(v, str) and "://" not in v and not os.path.isabs(v):
                t.config[k] = os.path.abspath(os.path.expanduser(v))
    check_image_folders(trials, data_dir)
    check_address(address)  # a dead --address: one line, before anything is written
    try:
        grace_s = grace_seconds()
    except ValueError as ex:
        raise ConfigError(str(ex)) from None
    cells, comps = count_kernel_computations(trials)
    fs_root = results if "://" in results else os.path.abspath(results)
    layout = ResultsLayout(fs_root, sweep.name)  # the trials' (absolute: another cwd)
    store = Store(results, sweep.name)  # the driver's own, named as the user gave it
    # a compacted file that does not parse is a ConfigError naming it: raised here, before
    # the lock, the manifest and MLflow (whose mirror would report it as its own failure)
    store.attempt_index()
    p = sweep.preset(preset)
    # the handlers first: a signal while the lock is taken only asks for a stop (the default
    # action would end the driver holding a lock); the token is known once it is ours
    control = StopControl(layout, None, grace_s)
    control.install()
    try:
        lock, note = store.acquire_lock()
    except BaseException as ex:  # e.g. no room for the lock file itself: none is left behind
        control.uninstall()
        full = disk_full_error(ex, fs_root, sweep.name) if isinstance(ex, OSError) else None
        if full is None:
            raise
        raise full from None
    control.token = lock["token"]
    summary = RunSummary(total=len(trials), skipped=0, launched=0, derived_written=0,
                         kernel_cells=cells, kernel_computations=comps)
    if note:
        summary.notes.append(note)
        log.warning(note)
    # a stop request left by an earlier driver is for none that runs now (our token is new;
    # one naming it came from a `symsweep stop` that already saw our lock, and stands)
    clear_stop(layout, keep=lock["token"])
    if fault is None and os.environ.get("SYMSWEEP_CRASH_AT_STEP"):
        ids = [s for s in os.environ.get("SYMSWEEP_CRASH_TRIALS", "").split(",") if s]
        fault = {"crash_at_step": int(os.environ["SYMSWEEP_CRASH_AT_STEP"]), "trials": ids}
    ctx = RunContext(
        sweep=sweep.name, preset=preset, results=fs_root, code_version=code_version(),
        # a URL stays a URL (abspath would make gs://b/x the local ./gs:/b/x)
        data_dir=(data_dir if "://" in data_dir else os.path.abspath(data_dir))
        if data_dir else None,
        cache_dir=os.path.abspath(cache_dir) if cache_dir else None,
        fault=dict(fault) if fault else None,
        # the trials poll the stop request naming this driver (stopping.StopProbe)
        driver_token=lock["token"], only=dict(only) if only else None,
        overrides=dict(getattr(sweep, "overrides", {}) or {}), mlflow_uri=mlflow_uri,
        address=address)
    tracker = None
    stop_hb = threading.Event()
    lost: list[str] = []  # set by the heartbeat when the sweep must stop

    def heartbeat() -> None:
        # Every failure is logged; once the lock has not been refreshed for nearly the stale
        # time (another driver could then take it over), or another driver holds it, the sweep
        # is stopped at once (control.abort: Tune's stopper ends its loop, a SIGINT wakes the
        # main thread elsewhere).
        last_ok = time.monotonic()
        fails = 0
        while not stop_hb.wait(HEARTBEAT_S):
            why = None
            try:
                store.heartbeat(lock)
                cur = store.read_lock() or {}
                if not cur.get("token"):  # gone, unreadable, or read while being written
                    raise OSError(f"lock file {store.lock_path} is missing or unreadable")
                if cur["token"] != lock["token"]:
                    why = (f"another driver took its lock over (pid {cur.get('pid')} on host "
                           f"{cur.get('host')})")
                else:
                    last_ok, fails = time.monotonic(), 0
                    continue
            except Exception as ex:
                fails += 1
                age = time.monotonic() - last_ok
                err = " ".join(f"{type(ex).__name__}: {ex}".split())[:300]
                log.error("driver lock heartbeat failed (%d in a row, lock last refreshed "
                          "%.0f s ago; another driver may take the sweep over after %.0f s): %s",
                          fails, age, LOCK_STALE_S, err)
                if age < LOCK_STALE_S - 3 * HEARTBEAT_S:
                    continue
                why = (f"its lock {store.lock_path} could not be refreshed for {age:.0f} s "
                       f"({fails} failures, last: {err})")
            lost.append(f"sweep '{sweep.name}' stopped: {why}; no other driver may run it "
                        "meanwhile. Finished trials are kept: fix access to the results "
                        "folder, then `symsweep resume`")
            control.abort(lost[0])
            return

    hb = threading.Thread(target=heartbeat, daemon=True, name="driver-lock-heartbeat")
    started_ray = False
    finished = False
    quiet = _DiskFullRecords(fs_root).__enter__()  # Tune's and MLflow's full-disk tracebacks
    disk_was_full = False
    try:
        control.armed = True  # from here a lost lock may interrupt the main thread
        hb.start()
        # attempts a dead driver left in flight get their failed rows (none runs now: the lock)
        summary.notes.extend(store.salvage_dead_attempts())
        store.write_manifest({
            "sweep": sweep.name, "preset": preset, "source": sweep.source, "dedupe": dedupe,
            # resume checks the sweep file it is given against this (it never loads `source`)
            "source_sha256": (file_sha256(sweep.source) if sweep.source and
                              os.path.isfile(sweep.source) else None),
            "only": dict(only) if only else None, "results": fs_root,
            # --set: resume applies them again, so it continues the same trials
            "overrides": dict(getattr(sweep, "overrides", {}) or {}) or None,
            "success_train_acc": p.success_train_acc, "data_dir": ctx.data_dir,
            "cache_dir": ctx.cache_dir, "written_at": now_utc().isoformat(),
            "trials": [t.to_dict() for t in trials],
        })
        if tracking:
            import json

            from orchestrator.tracking import Tracker

            # one parent MLflow run per invocation, the attempt runs nested under it
            tracker = Tracker(store, mlflow_uri=mlflow_uri, preset=preset,
                              source=sweep.source, code_version=ctx.code_version,
                              invocation={"preset": preset, "results": fs_root,
                                          "only": json.dumps(only) if only else None,
                                          "overrides": json.dumps(sweep.overrides)
                                          if getattr(sweep, "overrides", None) else None,
                                          "address": address, "trials": len(trials)})
            tracker.start()
        summary.derived_written += materialize_derived(store, trials, ctx)
        done = store.done_ids()
        todo = [t for t in trials if t.derived_from is None and t.trial_id not in done]
        summary.skipped = sum(1 for t in trials if t.trial_id in done)
        summary.launched = len(todo)
        if todo and not control.poll():
            env = _ray_env(todo)
            os.environ.update({k: v for k, v in env.items() if k.startswith(("RAY_", "TUNE"))})
            started_ray = ensure_ray(address, num_cpus, env)
            control.reinstall()  # ray.init made SIGTERM a plain sys.exit
            _run_tune(sweep, todo, trials, ctx, store, summary, tracker,
                      max_failures if max_failures is not None else p.max_failures, progress,
                      console, control)
            if lost:  # Tune stopped on the heartbeat's SIGINT
                raise LockLostError(lost[0])
            # Tune has ended every trial: attempts that died without a part get their failed
            # rows now, so this invocation's MLflow mirror completes their live runs
            summary.notes.extend(store.salvage_dead_attempts())
        summary.derived_written += materialize_derived(store, trials, ctx)
        finished = True
    except KeyboardInterrupt:
        if lost:  # the heartbeat's SIGINT outside Tune
            raise LockLostError(lost[0]) from None
        raise
    except Exception as ex:  # the driver's own writes (manifest, MLflow, Tune's state, Ray)
        full = disk_full_error(ex, fs_root, sweep.name)
        if full is None:
            raise
        disk_was_full = True
        raise full from None
    finally:
        # the clean-up below runs to its end: a signal now only logs (the handlers stay until
        # the lock is released; the default action would leave it behind)
        control.armed, control.closing = False, True
        if control.requested:
            summary.stopped_by, summary.exit_code = control.by, control.exit_code
        try:
            clear_stop(layout, lock["token"])
        except OSError as ex:  # it names this driver's token: no later driver obeys it
            log.info("could not remove the stop request of %s (%s)", sweep.name, ex)
        if tracker is not None:  # the invocation's parent run: KILLED when a stop cut it short
            cut = control.requested and summary.launched > summary.completed + \
                summary.diverged + summary.failed
            tracker.stop("FAILED" if not finished else "KILLED" if cut else "FINISHED")
            note = tracker.failure_note()
            if note:
                log.warning(note)
                summary.notes.append(note)
        if started_ray:
            import ray

            ray.shutdown()
            stop_reaper()
            control.reinstall()
        if finished:
            _compact_after_run(store, lock, summary)
        try:  # no attempt of this driver runs any more (Ray is shut down or never started)
            summary.notes.extend(store.salvage_dead_attempts(
                cause="stopped when the disk filled up" if disk_was_full else None))
        except Exception as ex:  # the next driver salvages them; a marker never counts alone
            say = log.info if disk_full_error(ex, fs_root, sweep.name) else log.warning
            say("could not record the attempts that died under %s (%s: %s); the next run or "
                "resume does", store.running_dir, type(ex).__name__, ex)
        stop_hb.set()
        if hb.is_alive():  # a heartbeat that read the lock could write it back after release
            hb.join(timeout=2 * HEARTBEAT_S)
        try:
            store.release_lock(lock)
        except Exception as ex:  # e.g. the access the heartbeat lost: the error above stands
            log.error("could not release the driver lock %s (%s: %s); a later driver on this "
                      "host takes it over once this process has ended", store.lock_path,
                      type(ex).__name__, ex)
        control.uninstall()
        quiet.__exit__()
        if quiet.count and finished:  # the disk filled and emptied again: the run is whole
            log.warning("Ray Tune / MLflow could not write %d time(s) for lack of space (their "
                        "tracebacks were not shown; the first: %s); every trial's result is "
                        "stored", quiet.count, (quiet.first or "").split("; free space")[0])
    summary.wall_s = time.time() - t_start
    return summary


def _compact_after_run(store: Store, lock: Mapping[str, Any], summary: RunSummary) -> None:
    """Fold this run's part files into one file per directory (Store.compact: every attempt
    row is kept, readers then open a few files instead of one per attempt; at 10^5 attempts
    that is seconds instead of minutes). Runs under the driver's own lock, after Tune and the
    MLflow mirror have stopped. A failure loses nothing (the parts stay as they were) and is
    said as a note; `symsweep compact` retries it."""
    try:
        out = store.compact(held_lock=lock)
    except Exception as ex:
        note = (f"compaction of {store.sweep} skipped ({type(ex).__name__}: {ex}); every part "
                f"file is intact; `symsweep compact {store.sweep}` retries it")
        log.warning(note)
        summary.notes.append(note)
        return
    log.info("compacted %s: %s", store.sweep, out)


class _DiskFullRecords(logging.Filter):
    """Drops (and counts) log records whose exception is a full disk. Ray Tune logs each failed
    save of its scratch state, and MLflow each failed SQL write, with a traceback; on a full
    disk the driver says it once, in one line, so those records are counted, not shown."""

    LOGGERS = ("ray.tune.execution.experiment_state", "ray.tune.tune", "mlflow.store.db.utils")

    def __init__(self, results: str) -> None:
        super().__init__()
        self.results = results
        self.count = 0
        self.first: str | None = None  # the first one, in one line (which folder, free space)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and disk_full(record.exc_info[1]) is not None:
            self.count += 1
            if self.first is None:
                self.first = str(disk_full_error(record.exc_info[1], self.results))
            return False
        return True

    def __enter__(self) -> _DiskFullRecords:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _stopper(control: StopControl, running: Any) -> Any:
    """The Tune stopper of a sweep. A trial that ended on a full disk (its final result has
    ``disk_full``, see `trial.tune_trainable`) stops the whole experiment at once, so no other
    trial and no retry writes against it; its ``message`` keeps the trial's one-line error for
    the driver. A stop request or a lost lock (``control``, stopping.py) ends it once no trial
    runs (``running()`` of them), or at once on an abort. (Built here: Ray is imported only
    when a sweep runs.)"""
    from ray import tune

    class SweepStopper(tune.Stopper):
        def __init__(self) -> None:
            self.message: str | None = None

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get("disk_full") and self.message is None:
                self.message = str(result.get("error") or "no space left on device")
            return bool(result.get("disk_full"))

        def stop_all(self) -> bool:
            return self.message is not None or control.should_end(running)

    return SweepStopper()


def _signals_callback(control: StopControl) -> Any:
    """A Tune callback whose ``setup`` (run after Tune installed its own SIGINT / SIGUSR1
    handlers, which end its loop without letting trials checkpoint) puts the sweep's stop
    handlers back (stopping.StopControl)."""
    from ray import tune

    class StopSignals(tune.Callback):
        def setup(self, **info: Any) -> None:
            control.reinstall()
            control.in_tune = True

        def __getstate__(self) -> dict[str, Any]:
            return {}  # Tune pickles its callbacks with its state; the control stays here

    return StopSignals()


def _run_tune(sweep: Sweep, todo: list[Trial], trials: list[Trial], ctx: RunContext,
              store: Store, summary: RunSummary, tracker: Any, max_failures: int,
              progress: bool, console: Any, control: StopControl) -> None:
    import ray
    from ray import tune

    from orchestrator.progress import ProgressCallback
    from orchestrator.tracking import MlflowLiveCallback

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "100")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # ...but not Tune's note that no pending trial fits the cluster (shown once a minute
    # while an autoscaler may still add nodes; without one `unschedulable` stops the run)
    logging.getLogger("ray.tune.execution.insufficient_resources_manager").setLevel(
        logging.WARNING)
    # kernels first; cells sharing tiles (gap/lap4/lap8 of one transform) far apart, so that
    # the second finds the first's tiles in the cache instead of computing them concurrently
    order = sorted(todo, key=lambda t: (t.kind != "kernel", t.config.get("arch") not in
                                        FULL_COV_ARCHS, t.config.get("arch")))

    def on_complete(trial_id: str) -> None:
        # derived cells are written once after the run (run_sweep), not here: re-reading the
        # store after every source trial is quadratic in the number of attempts
        if tracker is not None:
            tracker.poke()

    cb = ProgressCallback(total=len(todo), title=f"{sweep.name} [{ctx.preset}]",
                          on_attempt_end=on_complete, enabled=progress, console=console)
    for w in (sweep.workers or {}).values():
        ship_by_value(w.fn)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, ctx=ctx, workers=dict(sweep.workers or {})),
        trial_resources)
    # Tune's experiment state is scratch: the store (parts, trial-keyed checkpoints) is the
    # record and nothing reads Tune's state again (no Tuner.restore). So each run deletes the
    # `_tune/` leftovers of earlier runs (finished or killed: this driver holds the sweep's
    # lock, none of them is running) before it starts, and its own experiment dir when it
    # ends. Deleting rather than reusing one experiment name: Tune would mix the trial dirs
    # and experiment-state files of different runs in one directory.
    storage = ctx.layout.tune_storage
    n_old = clear_tune_state(ctx.layout)
    if n_old:
        log.info("removed %d Ray Tune state dir(s) of earlier runs under %s", n_old, storage)
    requests = memory_requests(order, node_memory())
    problem = None if may_autoscale() else unschedulable(requests, ray.nodes())
    if problem:
        raise ConfigError(problem)
    stopper = _stopper(control, lambda: len(cb.running))
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(requests)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            trial_name_creator=lambda t: t.config["trial"]["trial_id"],
            trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{ctx.preset}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            stop=stopper,
            # the live MLflow view logs from here, the driver (tracking.py says why)
            callbacks=[_signals_callback(control), cb] +
            ([MlflowLiveCallback(tracker)] if tracker is not None else []),
            verbose=0,
            log_to_file=False,
        ),
    )
    try:
        with cb:
            grid = tuner.fit()
    except ray.exceptions.RaySystemError as ex:  # pragma: no cover - cluster trouble
        raise RuntimeError(f"Ray failed: {ex}") from ex
    finally:
        control.in_tune = False
        try:
            clear_tune_state(ctx.layout)
        except OSError as ex:  # scratch: the next run removes it; a full disk is said below
            log.info("could not remove Ray Tune's state dir under %s (%s)", storage, ex)
    if stopper.message:
        raise DiskFullError(stopper.message)
    # trials that ended on bad input (UserError) completed for Tune but failed for us
    user_errors = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("user_error"))
    del grid  # the store, not Tune's result files, is the record
    summary.retries = cb.retries
    summary.failed = cb.failed + user_errors
    summary.interrupted = cb.interrupted
    ids = {t.trial_id for t in todo}
    df, _ = store.latest()
    st = df[df["trial_id"].isin(ids)]["status"]
    summary.completed = int((st == Status.COMPLETED).sum())
    summary.diverged = int((st == Status.DIVERGED).sum())
    # a corrupt checkpoint was skipped inside a trial (logged there, in the Ray worker's
    # log): say it here too, where the user looks
    import json

    for tid, mj in zip(df["trial_id"], df["metrics_json"], strict=True):
        if tid in ids and mj and "checkpoint_warnings" in mj:
            note = json.loads(mj).get("checkpoint_warnings")
            if note:
                summary.notes.append(note)
                log.warning(note)


def run_local(sweep: Sweep, preset: str, *, results: str, dedupe: bool = True,
              only: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished trial in this process without Ray (debugging aid, also used by
    tests to compare with the Ray path). Returns the workers' results."""
    trials = select_trials(sweep.expand(preset, dedupe=dedupe), only)
    fs_root = results if "://" in results else os.path.abspath(results)
    ctx = RunContext(sweep=sweep.name, preset=preset, results=fs_root,
                     code_version=code_version(), only=dict(only) if only else None)
    store = Store(ctx.layout)
    done = store.done_ids()
    out = []
    for t in trials:
        if t.derived_from is None and t.trial_id not in done:
            out.append(execute_trial(t, ctx, worker_for(t.kind, sweep.workers)))
    materialize_derived(store, trials, ctx)
    return out
