"""One attempt of one trial: run its worker, write its row, its predictions, derived rows.

`execute_trial` is the whole of an attempt and needs no Ray: restore the trial's latest
checkpoint from the trial-keyed store (checkpoints.py), call the worker
(``workers.train.train`` or ``workers.kernel_trial.run_kernel_trial``) with a ``report``
callback, write the attempt's Parquet part file (store.py; failed attempts too), and save its
test predictions. `tune_trainable` wraps it as Ray Tune's function trainable (runner.py runs
those); `materialize_derived` writes the rows of trials deduplicated onto another (spec.py).

Fault injection (tests): ``fault={"crash_at_step": N, "trials": [ids] or None}`` in the run
context (runner.run_sweep also reads the environment variables SYMSWEEP_CRASH_AT_STEP /
SYMSWEEP_CRASH_TRIALS) makes the first attempt of the chosen trials raise `InjectedFault` once
the worker reports step >= N (after that step's checkpoint is saved).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from orchestrator.attempt_log import AttemptLog
from orchestrator.checkpoints import DEFAULT_KEEP, TrialCheckpoints
from orchestrator.context import RunContext
from orchestrator.cpus import claim_cores
from orchestrator.fsio import disk_full_error, write_atomic
from orchestrator.spec import Trial
from orchestrator.stopping import StopProbe
from orchestrator.store import TIME_KEY, Store, now_utc
from orchestrator.tiles import TileCache, TileMapper
from workers.devices import check_gpus, describe, device_info
from workers.errors import TrialInterrupted, UserError
from workers.registry import Worker, worker_for
from workers.vocab import DONE_STATUSES, Status

log = logging.getLogger("symsweep")
# result keys of a kernel cell that chose diag_reg on validation, stored as row columns
# (store.TRIAL_SCHEMA; workers.kernel_trial.SELECTION_KEYS): None in every other row
SELECTION_COLUMNS = ("chosen_diag_reg", "fixed_reg_test_acc", "fixed_reg_test_mse",
                     "diag_reg_curve_json")


class InjectedFault(RuntimeError):
    """Raised by the fault-injection switch; never raised in normal runs."""


# ====================================================================== trial function
def _scalars(d: Mapping[str, Any]) -> dict[str, float | int | str | None]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, int | float | str) or v is None:
            out[k] = v
        elif isinstance(v, np.generic) and np.ndim(v) == 0:
            out[k] = v.item()
    return out


def _row(trial: Trial, ctx: RunContext, attempt: int, started, result: Mapping[str, Any],
         status: str, error: str | None, wall_s: float,
         start_step: int | None = None) -> dict[str, Any]:
    """The store row of one attempt. ``start_step``: the checkpoint step a finite trial's
    attempt resumed from (0: a fresh start; None for kernel cells and derived rows)."""
    import json

    c = trial.config
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:
        node = None
    return {
        "sweep": ctx.sweep, "trial_id": trial.trial_id, "attempt": attempt,
        "preset": ctx.preset, "kind": trial.kind, "arch": c.get("arch"),
        "inference": c.get("inference"), "transform": c.get("transform"), "seed": c.get("seed"),
        "width": c.get("width"), "depth": c.get("depth"), "dataset": c.get("dataset"),
        "image_size": c.get("image_size"), "train_size": result.get("train_size",
                                                                    c.get("train_size")),
        "test_size": result.get("test_size", c.get("test_size")), "status": status,
        "best_test_acc": result.get("best_test_acc"), "test_acc": result.get("test_acc"),
        "test_mse": result.get("test_mse"), "val_acc": result.get("val_acc"),
        "train_acc": result.get("train_acc"), "steps": result.get("steps"),
        "start_step": start_step,
        "best_train_acc": result.get("best_train_acc", result.get("train_acc")),
        "eta0": result.get("eta0"), "wall_s": wall_s, "error": error,
        **{k: result.get(k) for k in SELECTION_COLUMNS},
        "derived_from": trial.derived_from, "started_at": started, "finished_at": now_utc(),
        "code_version": ctx.code_version, "node": node, "host": socket.gethostname(),
        "backend": result.get("backend"), "device_kind": result.get("device_kind"),
        "device_count": result.get("device_count"),
        "config_json": json.dumps(c, sort_keys=True),
        "metrics_json": json.dumps(_scalars(result), sort_keys=True, default=str),
    }


def _best_so_far(history: list[dict[str, Any]]) -> dict[str, float]:
    """best_test_acc / best_train_acc of the last report that has them (a finite trainer's
    reports carry the running bests); {} when no report had them."""
    for m in reversed(history):
        best = {k: float(m[k]) for k in ("best_test_acc", "best_train_acc") if k in m}
        if best:
            return best
    return {}


def _ran_on(devices: dict[str, Any]) -> dict[str, Any]:
    """The row's device columns: ``devices`` when known (a GPU trial's check, GPU tiles),
    else this process's JAX devices if the worker computed with JAX here (not imported: {})."""
    return devices or (device_info() if "jax" in sys.modules else {})


def default_worker(kind: str) -> Worker:
    """The worker of a trial kind a sweep file does not override (`workers.registry`)."""
    return worker_for(kind)


def _fault_fires(fault: Mapping[str, Any] | None, trial_id: str, attempt: int, step: int) -> bool:
    if not fault or fault.get("crash_at_step") is None:
        return False
    ids = fault.get("trials")
    if ids and not any(trial_id.startswith(t) for t in ids):
        return False
    return attempt in fault.get("attempts", [1]) and step >= int(fault["crash_at_step"])


def _trial_checkpoints(trial: Trial, ctx: RunContext) -> TrialCheckpoints:
    """The trial-keyed checkpoint store of a finite trial. Config ``keep_checkpoints``: N >= 1
    keeps the newest N while the trial runs and removes them all when it finishes (completed
    or diverged); 0 keeps every checkpoint, also after it finished."""
    keep = trial.config.get("keep_checkpoints")
    keep = DEFAULT_KEEP if keep is None else int(keep)
    if keep < 0:
        from workers.errors import ConfigError

        raise ConfigError(f"keep_checkpoints={keep}: use N >= 1 (keep the newest N while the "
                          "trial runs, remove them when it finishes) or 0 (keep all)")
    return TrialCheckpoints(ctx.layout, trial.trial_id, keep=keep)


def execute_trial(trial: Trial, ctx: RunContext, worker: Worker | Callable[..., dict], *,
                  report_fn: Callable[[dict, str | None], None] | None = None) -> dict[str, Any]:
    """Run one attempt of ``trial`` with ``worker`` and write its part file (also when it
    fails, then re-raise). ``report_fn(metrics, checkpoint_path)`` receives every report
    (Tune's, inside a trial; the path is the checkpoint's place in the trial-keyed store).
    Returns the worker's final metrics. No Ray needed.

    A finite trial continues from the latest complete checkpoint in the trial-keyed store
    (whichever attempt, run or driver wrote it); each checkpoint the worker reports is copied
    there before the report returns (the worker may delete its own copy then).

    A stop request for the driver (``ctx.driver_token``; orchestrator/stopping.py) ends the
    attempt early as ``interrupted``: a worker taking ``should_stop`` checks it itself (a
    trainer between steps: checkpoint, then return ``status="interrupted"``), a kernel cell's
    tile mapper between tiles, any other worker at its next report (`TrialInterrupted`).

    What the attempt logs and prints is kept beside its row (`ResultsLayout.log`; bounded,
    orchestrator/attempt_log.py), written just before the row, whatever the outcome."""
    with AttemptLog() as alog:  # a copy of what the attempt logs and prints, beside its row
        return _attempt(trial, ctx, Worker.of(worker), report_fn, alog)


def _write_attempt(store: Store, alog: AttemptLog, row: dict[str, Any],
                   history: list[dict[str, Any]]) -> None:
    """The attempt's log (so far), then its row and history: a row always has its log."""
    alog.save(store.fs, store.layout.log(row["trial_id"], row["attempt"]))
    store.write_attempt(row, history)


def _attempt(trial: Trial, ctx: RunContext, worker: Worker,
             report_fn: Callable[[dict, str | None], None] | None,
             alog: AttemptLog) -> dict[str, Any]:
    store = Store(ctx.layout)
    # an earlier attempt of this trial that died without its part (Tune retries after a lost
    # worker) gets its failed row first, so this one is numbered after it
    store.salvage_dead_attempts(trial.trial_id)
    attempt = store.next_attempt(trial.trial_id)
    started = now_utc()
    t0 = time.time()
    # in flight (`symsweep status`'s running column, `show`); removed once the part exists.
    # It carries what a failed row needs, should this attempt die without writing one.
    c = trial.config
    store.mark_running(trial.trial_id, attempt, {
        "started_at": started.isoformat(), "preset": ctx.preset, "kind": trial.kind,
        "arch": c.get("arch"), "inference": c.get("inference"),
        "transform": c.get("transform"), "seed": c.get("seed"),
        "config_json": json.dumps(c, sort_keys=True), "code_version": ctx.code_version})
    wcfg = {**trial.config, **ctx.worker_paths()}
    history: list[dict[str, Any]] = []
    fault = ctx.fault
    ckpts: TrialCheckpoints | None = None
    restore_dir: str | None = None
    start_step: int | None = None
    ckpt_warnings: list[str] = []

    def restore() -> None:
        nonlocal ckpts, restore_dir, start_step, ckpt_warnings
        ckpts = _trial_checkpoints(trial, ctx)
        restore_dir = tempfile.mkdtemp(prefix="symsweep-restore-")
        restored, ckpt_warnings = ckpts.restore_latest(restore_dir)
        wcfg["resume_from"] = restore_dir if restored is not None else None
        start_step = restored.step if restored is not None else 0
        if restored is not None:
            log.info("trial %s attempt %d: resuming from step %d (%s)", trial.trial_id,
                     attempt, restored.step, restored.source)

    should_stop = StopProbe(ctx.layout, ctx.driver_token)
    takes_stop = worker.takes_stop
    last_ms = 0

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        nonlocal last_ms
        m = _scalars(metrics)
        # when this point was measured, on this machine's clock (MLflow's time axis, live and
        # rebuilt); strictly increasing within the attempt, so two points never share an
        # instant (a point within the same millisecond as the last is put 1 ms after it)
        last_ms = m[TIME_KEY] = max(int(time.time() * 1000), last_ms + 1)
        history.append(m)
        step = int(m.get("step", m.get("steps", len(history))) or 0)
        saved = None
        if checkpoint_dir and ckpts is not None:
            saved = ckpts.save(checkpoint_dir, step)
        # durable in the results root before the driver (and MLflow's live view) sees it
        store.write_inflight(trial.trial_id, attempt, len(history), m)
        if report_fn is not None:  # the attempt, so the driver's live view can key its run
            report_fn({**m, "attempt": attempt}, saved)
        if _fault_fires(fault, trial.trial_id, attempt, step):
            raise InjectedFault(f"injected crash at step {step} (attempt {attempt})")
        if not takes_stop and should_stop():
            kept = f"; its checkpoint of step {step} is kept" if saved else ""
            raise TrialInterrupted(f"stopped on a stop request at step {step}{kept}")

    kwargs: dict[str, Any] = {"should_stop": should_stop}
    mapper = None
    if trial.kind == "kernel" and worker.takes_tiles:
        r = trial.resources
        mapper = TileMapper(TileCache(ctx.layout) if ctx.tiles else None,
                            # CPU tiles: one per CPU of the trial's bundle; GPU tiles: the
                            # preset's bound on the cluster's GPUs one cell takes
                            inflight=max(1, int(r.get("cpu", 1) if not r.get("tile_gpu")
                                                else r.get("tile_inflight", 1))),
                            num_gpus=float(r.get("tile_gpu", 0.0)),
                            num_cpus=float(r.get("tile_cpu", 1.0)), should_stop=should_stop)
        kwargs["map_tiles"] = mapper
    gpus = float(trial.resources.get("gpu", 0) or 0)
    devices: dict[str, Any] = {}  # what the attempt computed on: the row's device columns
    try:  # a failure while restoring is this attempt's failure too: it gets its row
        if gpus > 0:  # a GPU trial whose JAX has no GPU stops here, never runs on the CPU
            devices = check_gpus(gpus)
        if trial.kind == "train":
            restore()
        result = dict(worker(wcfg, report, **kwargs) or {})
    except TrialInterrupted as ex:  # a stop request: not a failure, the trial is not done
        stopped = {"checkpoint_warnings": " | ".join(ckpt_warnings)} if ckpt_warnings else {}
        if mapper is not None:
            stopped.update(tiles_cached=mapper.hits, tiles_computed=mapper.computed)
        stopped.update(_ran_on(devices))
        _write_attempt(store, alog, _row(trial, ctx, attempt, started, stopped,
                                         Status.INTERRUPTED, str(ex), time.time() - t0,
                                         start_step), history)
        store.clear_inflight(trial.trial_id, attempt)
        store.clear_running(trial.trial_id)
        return {**stopped, "status": Status.INTERRUPTED, "error": str(ex)}
    except Exception as ex:
        root = root_cause(ex)
        # bad input (UserError: config / data) is stored as its own one-line message, which
        # says how to fix it; anything else with its type. Never Ray's wrapper of a tile task's
        # error (a colour-coded traceback header), always the root cause.
        msg = (str(root) if isinstance(root, UserError)
               else f"{type(root).__name__}: {root}").strip()
        msg = (msg.splitlines() or [type(root).__name__])[0][:500]
        failed = {"checkpoint_warnings": " | ".join(ckpt_warnings)} if ckpt_warnings else {}
        failed.update(_ran_on(devices))
        # the best accuracies reached so far (the trainers report them cumulatively, across a
        # resume too), so a run that reached 95% before it crashed still counts, as App. B.1
        # counts it (`orchestrator.analysis.successful`); its status stays "failed"
        failed.update(_best_so_far(history))
        row = _row(trial, ctx, attempt, started, failed, Status.FAILED, msg, time.time() - t0,
                   start_step)
        # the whole traceback next to the one-line message (`symsweep show` prints it)
        row["traceback"] = "".join(traceback.format_exception(root))[-20000:]
        _write_attempt(store, alog, row, history)
        store.clear_inflight(trial.trial_id, attempt)
        store.clear_running(trial.trial_id)
        if isinstance(root, UserError) and root is not ex:
            raise root from None  # the caller tells bad input from crashes by its type
        raise
    finally:
        if restore_dir:
            shutil.rmtree(restore_dir, ignore_errors=True)
    if ckpt_warnings:  # in the attempt's metrics_json, so the fallback is on record
        result["checkpoint_warnings"] = " | ".join(ckpt_warnings)
    preds = result.pop("predictions", None)
    if preds is not None:  # per-trial test predictions (e.g. Fig. S1 ensembles) as an artifact
        result["predictions_path"] = save_predictions(store, trial.trial_id, attempt, preds)
    if mapper is not None:
        result.setdefault("tiles_cached", mapper.hits)
        result.setdefault("tiles_computed", mapper.computed)
        st = mapper.stats  # where the tiles ran and what they held (metrics_json)
        for k in ("waited", "peak_held_bytes", "put_bytes", "tile_s"):
            if k in st:
                result.setdefault(f"tiles_{k}", st[k])
        if st.get("nodes"):
            result.setdefault("tiles_nodes_json", json.dumps(st["nodes"], sort_keys=True))
        if st.get("devices"):  # GPU tiles: the cell computed there, not in this process
            result.setdefault("tiles_devices_json", json.dumps(st["devices"], sort_keys=True))
            if mapper.num_gpus > 0:
                devices = max(st["device_info"].values(), key=lambda d: st["devices"][
                    describe(d)])
        if mapper.cache is not None and mapper.cache.corrupt:  # shown by the driver
            result.setdefault("tiles_corrupt", mapper.cache.corrupt)
            result.setdefault("tiles_corrupt_note", " | ".join(mapper.cache.corrupt_notes))
    result.update(_ran_on(devices))
    status = result.get("status") or Status.COMPLETED
    if status not in (*DONE_STATUSES, Status.INTERRUPTED):
        status = Status.FAILED
    row = _row(trial, ctx, attempt, started, result, status, result.get("error"),
               float(result.get("wall_s") or (time.time() - t0)), start_step)
    _write_attempt(store, alog, row, history)
    store.clear_inflight(trial.trial_id, attempt)
    store.clear_running(trial.trial_id)
    # a finished trial is never run again: its checkpoints only take space (the row is
    # written first, so a crash in between leaves checkpoints, never a lost result)
    if ckpts is not None and status in DONE_STATUSES and ckpts.keep > 0:
        ckpts.remove_all()
    return result


def root_cause(ex: BaseException) -> BaseException:
    """The exception a Ray task wrapper (``RayTaskError``, whose ``cause`` is the task's own
    exception) stands for; ``ex`` itself when it wraps nothing."""
    seen = 0
    while seen < 10 and type(ex).__name__.startswith("RayTaskError") and \
            isinstance(getattr(ex, "cause", None), BaseException):
        ex = ex.cause  # type: ignore[attr-defined]
        seen += 1
    return ex


def predictions_path(store: Store, trial_id: str, attempt: int) -> str:
    """Where an attempt's test predictions live: <root>/<sweep>/predictions/<id>-a<n>.npy."""
    return store.layout.predictions(trial_id, attempt)


def save_predictions(store: Store, trial_id: str, attempt: int, preds: Any) -> str:
    """Write a worker's ``predictions`` (N_test, K) as float32 .npy (temporary name, then
    rename); returns the path (relative to the store's filesystem)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(preds, dtype=np.float32))
    return write_atomic(store.fs, predictions_path(store, trial_id, attempt), buf.getvalue())


def tune_trainable(config: dict, ctx: RunContext,
                   workers: Mapping[str, Worker] | None = None) -> None:
    """The Tune function trainable: config = {"trial": Trial dict}; ``ctx`` and ``workers``
    come through ``tune.with_parameters`` (the same for every trial of the run).

    No checkpoint is reported to Tune: a retry of the trial (a new call of this function)
    finds the trial's checkpoints in the trial-keyed store like any later attempt does
    (execute_trial), so Tune's own checkpointing would only store them a second time."""
    from ray import tune

    trial = Trial.from_dict(config["trial"])
    if StopProbe(ctx.layout, ctx.driver_token)():
        # the sweep is stopping: Tune may still start trials it had queued; they end at once,
        # with no attempt (and no row), and run on resume
        tune.report({"trial_finished": 1, Status.INTERRUPTED: 1, "not_started": 1})
        return
    if trial.resources.get("gpu", 0) == 0 and trial.resources.get("tile_gpu", 0) == 0:
        # before the worker imports JAX: its CPU pool is sized from the cores pinned here,
        # so a 1-CPU trial runs one busy thread, not one per core of the machine (cpus.py)
        claim_cores(trial.resources.get("cpu", 1))
    worker = worker_for(trial.kind, workers)

    def report_fn(metrics: dict, checkpoint_path: str | None) -> None:
        tune.report({k: v for k, v in metrics.items() if v is not None})

    try:
        result = execute_trial(trial, ctx, worker, report_fn=report_fn)
    except Exception as ex:
        full = disk_full_error(ex, ctx.results, ctx.sweep)
        if full is None and not isinstance(ex, UserError):
            raise  # a crash: Tune retries it from the trial's last checkpoint
        # A full disk (or quota) fails every retry and every other trial alike: end normally
        # with a `disk_full` result, on which the driver's stopper ends the whole run at once
        # (runner._StopOnDiskFull). Raising would make Tune retry, and write its own error
        # file onto the full disk (it then reads it back empty: EOFError).
        # Bad config or data (UserError) fails the same way on every attempt: Tune's retries
        # are for crashes (FailureConfig has no per-exception filter), so end the trial
        # normally with a final `user_error` result. execute_trial has written the failed row
        # with the one-line message; `_run_tune` counts such trials as failed.
        if full is not None:
            tune.report({"trial_finished": 1, "disk_full": 1, "error": str(full)})
            return
        tune.report({"trial_finished": 1, "user_error": 1, "error": str(ex).splitlines()[0]})
        return
    final = {k: v for k, v in _scalars(result).items() if v is not None}
    final["trial_finished"] = 1
    if result.get("status") == Status.INTERRUPTED:  # counted so by the driver (progress.py)
        final[Status.INTERRUPTED] = 1
    tune.report(final)


# ====================================================================== derived rows
def materialize_derived(store: Store, trials: list[Trial], ctx: RunContext,
                        only_source: str | None = None) -> int:
    """Write a row for every derived trial whose source has a finished attempt and which has
    none itself; metrics are copied from the source's latest row. Returns rows written."""
    derived = [t for t in trials if t.derived_from and
               (only_source is None or t.derived_from == only_source)]
    if not derived:
        return 0
    df, _ = store.latest()
    rows = {r["trial_id"]: r for r in df.to_dict("records")}
    attempts = store.attempt_index()  # one listing, not one per derived trial
    n = 0
    for t in derived:
        mine = rows.get(t.trial_id)
        if mine is not None and mine["status"] in DONE_STATUSES:
            continue
        src = rows.get(t.derived_from)
        if src is None or src["status"] not in DONE_STATUSES:
            continue
        import json

        metrics = json.loads(src.get("metrics_json") or "{}")
        r = _row(t, ctx, attempts.get(t.trial_id, 0) + 1, now_utc(), metrics, src["status"],
                 src.get("error"), 0.0)
        for k in ("best_test_acc", "test_acc", "test_mse", "val_acc", "train_acc", "steps",
                  "best_train_acc", "eta0", "train_size", "test_size"):
            r[k] = None if _isnan(src.get(k)) else src.get(k)
        store.write_attempt(r, [])
        n += 1
    return n


def _isnan(v: Any) -> bool:
    try:
        return v is None or bool(np.isnan(v))
    except TypeError:
        return False
