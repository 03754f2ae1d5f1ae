"""Run a sweep's trials as Ray Tune trials; kernel tiles as Ray tasks with a tile cache.

Flow of `run_sweep`:
1. expand the sweep (spec.py), take the driver lock of the sweep under the results root;
2. write derived rows whose source already finished, and skip every trial with a finished
   (completed / diverged) attempt: this is resume;
3. start (or join, ``address='auto'``) Ray and run the remaining trials as one Tune
   experiment of function trainables. Each trial calls its worker
   (``workers.train.train`` or ``workers.kernel_trial.run_kernel_trial``) with a ``report``
   callback that forwards metrics to ``ray.tune.report``. A finite trial's checkpoints go
   to the trial-keyed store under the results root (checkpoints.py), so every later attempt
   (a Tune retry, ``FailureConfig(max_failures)``; ``symsweep resume``; the same sweep
   submitted again on a new cluster) continues from the trial's latest complete checkpoint;
4. every attempt, failed ones included, writes its own Parquet part file from inside the
   trial (store.py), so a killed driver loses no finished trial; the driver mirrors the part
   files to MLflow (tracking.py) and shows live progress.

Fault injection (tests): ``fault={"crash_at_step": N, "trials": [ids] or None}`` (or the
environment variables SYMSWEEP_CRASH_AT_STEP / SYMSWEEP_CRASH_TRIALS) makes the first attempt
of the chosen trials raise `InjectedFault` once the worker reports step >= N (after that step's
checkpoint is saved).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.checkpoints import DEFAULT_KEEP, TrialCheckpoints, clear_tune_state
from orchestrator.fsio import resolve_root, write_atomic
from orchestrator.spec import (
    SWEEP_MODULE_PREFIX,
    Sweep,
    Trial,
    count_kernel_computations,
    file_sha256,
    select_trials,
)
from orchestrator.store import DONE_STATUSES, TIME_KEY, Store, now_utc
from workers.errors import ConfigError, UserError
from workers.vocab import FULL_COV_ARCHS

log = logging.getLogger("symsweep")


class InjectedFault(RuntimeError):
    """Raised by the fault-injection switch; never raised in normal runs."""


# ====================================================================== tile cache
def _array_digest(a: Any) -> str:
    arr = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256()
    h.update(str((arr.dtype.str, arr.shape)).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _module_digest(fn: Callable) -> str:
    """Hash of the source file defining fn: tiles computed by older code are not reused."""
    try:
        path = inspect.getsourcefile(fn)
        with open(path, "rb") as f:  # type: ignore[arg-type]
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (TypeError, OSError):
        return "nosource"


def tile_key(fn: Callable, kwargs: Mapping[str, Any], _memo: dict[int, str] | None = None) -> str:
    """Content hash of one tile: the function (name and source), every argument, arrays by
    their bytes. Equal inputs give equal keys in every process and every sweep."""
    memo = {} if _memo is None else _memo
    h = hashlib.sha256()
    h.update(f"{fn.__module__}.{fn.__qualname__}:{_module_digest(fn)}".encode())
    for k in sorted(kwargs):
        v = kwargs[k]
        if isinstance(v, type):  # e.g. dtype=np.float32: by name (a class has __array__ too)
            h.update(f"|{k}=type:{v.__module__}.{v.__qualname__}".encode())
        elif isinstance(v, np.ndarray) or hasattr(v, "__array__") and hasattr(v, "shape"):
            d = memo.get(id(v))
            if d is None:
                d = memo[id(v)] = _array_digest(v)
            h.update(f"|{k}=array:{d}".encode())
        else:
            h.update(f"|{k}={v!r}".encode())
    return h.hexdigest()[:32]


def _flatten(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}d:{k}/"))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{'t' if isinstance(obj, tuple) else 'l'}:{i}/"))
        return out
    return {prefix.rstrip("/") or "a:": np.asarray(obj)}


def _unflatten(flat: Mapping[str, np.ndarray]) -> Any:
    if list(flat) == ["a:"]:
        return flat["a:"]
    root: dict[str, Any] = {}
    for key, arr in flat.items():
        parts = key.split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = arr

    def build(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        kinds = {k.split(":", 1)[0] for k in node}
        items = {k.split(":", 1)[1]: build(v) for k, v in node.items()}
        if kinds == {"d"}:
            return items
        seq = [items[str(i)] for i in range(len(items))]
        return tuple(seq) if kinds == {"t"} else seq

    return build(root)


_TILE_SUM = "__sha256__"  # name of the checksum entry inside a tile's .npz


def _tile_checksum(key: str, flat: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tile's key and every array (name, dtype, shape, bytes): a tile is
    valid only under its own key, so a valid .npz of another tile (or edited numbers) fails."""
    h = hashlib.sha256(f"symsweep-tile:{key}".encode())
    for name in sorted(flat):
        arr = np.ascontiguousarray(flat[name])
        h.update(f"|{name}:{arr.dtype.str}:{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


class TileCache:
    """Content-addressed tile results under ``<results>/tiles/<key>.npz`` (local or URI).

    Each tile stores a checksum of its arrays bound to its key (`_tile_checksum`), verified on
    read: a truncated, edited or swapped tile (another tile's valid .npz under this name) is
    recomputed, and said so: a warning in this process's log, and ``corrupt`` (count) /
    ``corrupt_notes`` (messages) for the trial to report to the driver (``tiles_corrupt``),
    since a trial's own log does not reach the driver's output.
    """

    def __init__(self, root: str):
        self.fs, base = resolve_root(root)
        self.dir = f"{base}/tiles"
        self.corrupt = 0
        self.corrupt_notes: list[str] = []

    def _bad(self, key: str, why: str) -> None:
        msg = f"kernel tile {self.dir}/{key}.npz {why}; recomputing it"
        log.warning(msg)
        self.corrupt += 1
        if len(self.corrupt_notes) < 5:
            self.corrupt_notes.append(msg)

    def get(self, key: str) -> Any | None:
        """The tile stored under ``key``, or None when absent or failing its checksum."""
        try:
            with self.fs.open_input_file(f"{self.dir}/{key}.npz") as f:
                data = f.read()
        except (FileNotFoundError, OSError):
            return None  # not computed yet
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except Exception as ex:  # a truncated tile is recomputed, and said so
            self._bad(key, f"is unreadable ({type(ex).__name__}: {ex})")
            return None
        stored = flat.pop(_TILE_SUM, None)
        if stored is None:
            self._bad(key, "has no checksum")
            return None
        if str(stored) != _tile_checksum(key, flat):
            self._bad(key, "fails its checksum (its content is not this tile's)")
            return None
        return _unflatten(flat)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (arrays in nested dicts / lists / tuples) under ``key`` with its
        checksum: temporary name, then rename, so a reader never sees half a tile."""
        flat = _flatten(value)
        buf = io.BytesIO()
        np.savez(buf, **flat, **{_TILE_SUM: np.array(_tile_checksum(key, flat))})
        write_atomic(self.fs, f"{self.dir}/{key}.npz", buf.getvalue())


def ship_by_value(fn: Callable) -> None:
    """A function defined in a sweep file (a worker, or a tile function it maps) lives in a
    module load_sweep imported under a private name that Ray's workers cannot import: make
    cloudpickle send that module by value. Functions of installed modules are left alone."""
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    if mod is not None and mod.__name__.startswith(SWEEP_MODULE_PREFIX):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)


def _run_tile(fn: Callable, names: list[str], *values: Any) -> Any:
    return fn(**dict(zip(names, values, strict=True)))


@dataclass
class TileMapper:
    """``map_tiles(fn, list_of_kwargs) -> list`` for the kernel engine: cached tiles are
    loaded, the others run as Ray tasks (at most ``inflight`` at a time; in-process when Ray
    is not initialised) and each is stored as soon as it finishes, so a crash keeps them."""

    cache: TileCache | None
    inflight: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    use_ray: bool = True
    hits: int = 0
    computed: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def __call__(self, fn: Callable, kwargs_list: list[Mapping[str, Any]], *,
                 on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Results of fn(**kw) for every kw, in order. With ``on_result``, each result is
        passed to ``on_result(i, value)`` as soon as it is loaded or computed (in completion
        order) and not kept: the returned list then holds None, so the caller (the kernel
        engine) holds at most the tiles in flight, not all of them."""
        memo: dict[int, str] = {}
        keys = [tile_key(fn, kw, memo) for kw in kwargs_list]
        out: list[Any] = [None] * len(keys)

        def deliver(i: int, value: Any) -> None:
            if on_result is None:
                out[i] = value
            else:
                on_result(i, value)

        todo = []
        for i, k in enumerate(keys):
            v = self.cache.get(k) if self.cache is not None else None
            if v is None:
                todo.append(i)
            else:
                self.hits += 1
                deliver(i, v)
            del v
        if not todo:
            return out
        ray_ok = False
        if self.use_ray:
            import ray

            ray_ok = ray.is_initialized()
        if not ray_ok:
            for i in todo:
                v = fn(**kwargs_list[i])
                self._store(keys[i], v)
                deliver(i, v)
                del v
            return out
        import ray

        # CPU-only: the trial's own CPU bundle covers its tiles (num_cpus=0, at most
        # `inflight` at a time), so a trial never waits on CPUs it holds itself. GPU tiles
        # run in the trial's tile bundle (placement-group capture).
        ship_by_value(fn)
        remote = ray.remote(_run_tile).options(
            num_cpus=0 if self.num_gpus == 0 else self.num_cpus, num_gpus=self.num_gpus,
            max_retries=2)
        refs_by_id: dict[int, Any] = {}

        def submit(i: int) -> Any:
            kw = kwargs_list[i]
            names, vals = list(kw), []
            for n in names:
                v = kw[n]
                if isinstance(v, np.ndarray) and v.nbytes > 100_000:
                    if id(v) not in refs_by_id:
                        refs_by_id[id(v)] = ray.put(v)
                    v = refs_by_id[id(v)]
                vals.append(v)
            return remote.remote(fn, names, *vals)

        pending: dict[Any, int] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < max(1, self.inflight):
                i = queue.pop(0)
                pending[submit(i)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for r in ready:
                i = pending.pop(r)
                v = ray.get(r)
                self._store(keys[i], v)
                deliver(i, v)
                del v
        return out

    def _store(self, key: str, value: Any) -> None:
        self.computed += 1
        if self.cache is not None:
            self.cache.put(key, value)


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


def _row(trial: Trial, ctx: Mapping[str, Any], attempt: int, started, result: Mapping[str, Any],
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
        "sweep": ctx["sweep"], "trial_id": trial.trial_id, "attempt": attempt,
        "preset": ctx["preset"], "kind": trial.kind, "arch": c.get("arch"),
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
        "derived_from": trial.derived_from, "started_at": started, "finished_at": now_utc(),
        "code_version": ctx.get("code_version"), "node": node, "host": socket.gethostname(),
        "config_json": json.dumps(c, sort_keys=True),
        "metrics_json": json.dumps(_scalars(result), sort_keys=True, default=str),
    }


def _default_worker(kind: str) -> Callable[..., dict]:
    if kind == "train":
        from workers.train import train

        return train
    from workers.kernel_trial import run_kernel_trial

    return run_kernel_trial


def _fault_fires(fault: Mapping[str, Any] | None, trial_id: str, attempt: int, step: int) -> bool:
    if not fault or fault.get("crash_at_step") is None:
        return False
    ids = fault.get("trials")
    if ids and not any(trial_id.startswith(t) for t in ids):
        return False
    return attempt in fault.get("attempts", [1]) and step >= int(fault["crash_at_step"])


def _trial_checkpoints(trial: Trial, ctx: Mapping[str, Any]) -> TrialCheckpoints:
    """The trial-keyed checkpoint store of a finite trial. Config ``keep_checkpoints``: N >= 1
    keeps the newest N while the trial runs and removes them all when it finishes (completed
    or diverged); 0 keeps every checkpoint, also after it finished."""
    keep = trial.config.get("keep_checkpoints")
    keep = DEFAULT_KEEP if keep is None else int(keep)
    if keep < 0:
        from workers.errors import ConfigError

        raise ConfigError(f"keep_checkpoints={keep}: use N >= 1 (keep the newest N while the "
                          "trial runs, remove them when it finishes) or 0 (keep all)")
    return TrialCheckpoints(ctx["results"], ctx["sweep"], trial.trial_id, keep=keep)


def execute_trial(trial: Trial, ctx: Mapping[str, Any], worker: Callable[..., dict], *,
                  report_fn: Callable[[dict, str | None], None] | None = None) -> dict[str, Any]:
    """Run one attempt of ``trial`` with ``worker`` and write its part file (also when it
    fails, then re-raise). ``report_fn(metrics, checkpoint_path)`` receives every report
    (Tune's, inside a trial; the path is the checkpoint's place in the trial-keyed store).
    Returns the worker's final metrics. No Ray needed.

    A finite trial continues from the latest complete checkpoint in the trial-keyed store
    (whichever attempt, run or driver wrote it); each checkpoint the worker reports is copied
    there before the report returns (the worker may delete its own copy then)."""
    store = Store(ctx["results"], ctx["sweep"])
    attempt = store.next_attempt(trial.trial_id)
    started = now_utc()
    t0 = time.time()
    # in flight (`symsweep status`'s running column, `show`); removed once the part exists
    store.mark_running(trial.trial_id, attempt, {"started_at": started.isoformat()})
    wcfg = dict(trial.config)
    for k in ("data_dir", "cache_dir"):
        if ctx.get(k):
            wcfg[k] = ctx[k]
    history: list[dict[str, Any]] = []
    fault = ctx.get("fault")
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
        if report_fn is not None:  # the attempt, so the driver's live view can key its run
            report_fn({**m, "attempt": attempt}, saved)
        if _fault_fires(fault, trial.trial_id, attempt, step):
            raise InjectedFault(f"injected crash at step {step} (attempt {attempt})")

    kwargs: dict[str, Any] = {}
    mapper = None
    if trial.kind == "kernel" and "map_tiles" in inspect.signature(worker).parameters:
        r = trial.resources
        mapper = TileMapper(TileCache(ctx["tiles_root"]) if ctx.get("tiles_root") else None,
                            inflight=max(1, int(r.get("cpu", 1) if not r.get("tile_gpu")
                                                else r.get("tile_cpu", 1))),
                            num_gpus=float(r.get("tile_gpu", 0.0)),
                            num_cpus=float(r.get("tile_cpu", 1.0)))
        kwargs["map_tiles"] = mapper
    try:  # a failure while restoring is this attempt's failure too: it gets its row
        if trial.kind == "train":
            restore()
        result = dict(worker(wcfg, report, **kwargs) or {})
    except Exception as ex:
        root = root_cause(ex)
        # bad input (UserError: config / data) is stored as its own one-line message, which
        # says how to fix it; anything else with its type. Never Ray's wrapper of a tile task's
        # error (a colour-coded traceback header), always the root cause.
        msg = (str(root) if isinstance(root, UserError)
               else f"{type(root).__name__}: {root}").strip()
        msg = (msg.splitlines() or [type(root).__name__])[0][:500]
        failed = {"checkpoint_warnings": " | ".join(ckpt_warnings)} if ckpt_warnings else {}
        row = _row(trial, ctx, attempt, started, failed, "failed", msg, time.time() - t0,
                   start_step)
        # the whole traceback next to the one-line message (`symsweep show` prints it)
        row["traceback"] = "".join(traceback.format_exception(root))[-20000:]
        store.write_attempt(row, history)
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
        if mapper.cache is not None and mapper.cache.corrupt:  # shown by the driver
            result.setdefault("tiles_corrupt", mapper.cache.corrupt)
            result.setdefault("tiles_corrupt_note", " | ".join(mapper.cache.corrupt_notes))
    status = result.get("status") or "completed"
    if status not in ("completed", "diverged"):
        status = "failed"
    store.write_attempt(_row(trial, ctx, attempt, started, result, status, result.get("error"),
                             float(result.get("wall_s") or (time.time() - t0)), start_step),
                        history)
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
    return f"{store.dir}/predictions/{trial_id}-a{attempt}.npy"


def save_predictions(store: Store, trial_id: str, attempt: int, preds: Any) -> str:
    """Write a worker's ``predictions`` (N_test, K) as float32 .npy (temporary name, then
    rename); returns the path (relative to the store's filesystem)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(preds, dtype=np.float32))
    return write_atomic(store.fs, predictions_path(store, trial_id, attempt), buf.getvalue())


def tune_trainable(config: dict, workers: Mapping[str, Callable] | None = None) -> None:
    """The Tune function trainable: config = {"trial": Trial dict, "ctx": run context}.

    No checkpoint is reported to Tune: a retry of the trial (a new call of this function)
    finds the trial's checkpoints in the trial-keyed store like any later attempt does
    (execute_trial), so Tune's own checkpointing would only store them a second time."""
    from ray import tune

    trial = Trial.from_dict(config["trial"])
    ctx = config["ctx"]
    worker = (workers or {}).get(trial.kind) or _default_worker(trial.kind)

    def report_fn(metrics: dict, checkpoint_path: str | None) -> None:
        tune.report({k: v for k, v in metrics.items() if v is not None})

    try:
        result = execute_trial(trial, ctx, worker, report_fn=report_fn)
    except UserError as ex:
        # Bad config or data fails the same way on every attempt: Tune's retries are for
        # crashes (FailureConfig has no per-exception filter), so end the trial normally with
        # a final `user_error` result. execute_trial has written the failed row with the
        # one-line message; `_run_tune` counts such trials as failed.
        tune.report({"trial_finished": 1, "user_error": 1, "error": str(ex).splitlines()[0]})
        return
    final = {k: v for k, v in _scalars(result).items() if v is not None}
    final["trial_finished"] = 1
    tune.report(final)


# ====================================================================== derived rows
def materialize_derived(store: Store, trials: list[Trial], ctx: Mapping[str, Any],
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
LOCK_STALE_S = 600.0  # Store.acquire_lock's default: another host may take the lock after this


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
    notes: list[str] = field(default_factory=list)


def _ray_env(trials: list[Trial]) -> dict[str, str]:
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if all(t.resources.get("gpu", 0) == 0 and t.resources.get("tile_gpu", 0) == 0
           for t in trials):
        threads = max(1, int(min((t.resources.get("cpu", 1) for t in trials), default=1)))
        env["XLA_FLAGS"] = ("--xla_cpu_multi_thread_eigen=false "
                            f"intra_op_parallelism_threads={threads}")
        env["OMP_NUM_THREADS"] = str(threads)
        env["JAX_PLATFORMS"] = "cpu"
    return env


# The reaper of an embedded Ray (see `_start_reaper`): a separate tiny process that reads the
# driver's pipe; while the driver lives it records the driver's Ray descendants every second
# (pid and start time, so a reused pid is never hit); at EOF (the driver ended, however: even
# by SIGKILL the kernel closes the pipe) it sends SIGTERM to those still alive, then SIGKILL.
_REAPER_SRC = r"""
import os, select, signal, sys, time
import psutil
driver = psutil.Process(int(sys.argv[1]))
seen = {}
def record():
    try:
        for p in driver.children(recursive=True):
            try:
                if p.pid != os.getpid() and "ray" in " ".join(p.cmdline()).lower():
                    seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass
    except psutil.Error:
        pass
fd = sys.stdin.fileno()
while True:
    record()
    if select.select([fd], [], [], 1.0)[0] and not os.read(fd, 4096):
        break
alive = []
for pid, t in seen.items():
    try:
        p = psutil.Process(pid)
        if p.create_time() == t:
            p.send_signal(signal.SIGTERM)
            alive.append(p)
    except psutil.Error:
        pass
_, left = psutil.wait_procs(alive, timeout=3)
for p in left:
    try:
        p.kill()
    except psutil.Error:
        pass
"""
_reaper: subprocess.Popen | None = None


def _start_reaper() -> None:
    """Start the reaper of this driver's embedded Ray (replacing the previous one, whose Ray
    was shut down). Ray fate-shares its direct children with the driver (PR_SET_PDEATHSIG),
    but the dashboard and runtime-env agents are the raylet's children: after a SIGKILL of the
    driver they outlived it by about a minute, ignoring SIGTERM meanwhile. Ray's own reaper
    (services.start_reaper) kills its whole process group, which would first take the driver
    out of the terminal's foreground group (Ctrl+C would no longer reach it); this one only
    kills the processes it saw descend from the driver."""
    global _reaper
    stop_reaper()
    import sys

    _reaper = subprocess.Popen(  # noqa: S603 - fixed code, our own pid
        [sys.executable, "-c", _REAPER_SRC, str(os.getpid())], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # not in the driver's group: Ctrl+C / killpg spare it


def stop_reaper() -> None:
    """After ``ray.shutdown()`` of an embedded Ray: the reaper ends whatever of it is left
    and exits (also done at interpreter exit, or by the kernel at any death of the driver)."""
    global _reaper
    if _reaper is not None:
        _reaper.stdin.close()  # type: ignore[union-attr]
        _reaper = None


def ensure_ray(address: str | None, num_cpus: int | None, env: Mapping[str, str]) -> bool:
    """Start embedded Ray (or connect to ``address``) unless already initialised; returns
    True when this call started it (the caller then shuts it down). An embedded Ray's
    processes end with the driver however it ends, SIGKILL included (`_start_reaper`)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                              log_to_driver=False, runtime_env={"env_vars": dict(env)},
                              ignore_reinit_error=True)
    if address:
        ray.init(address=address, **kw)
    else:
        _start_reaper()  # before ray.init: it records the processes as they appear
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    return True


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
    cells, comps = count_kernel_computations(trials)
    store = Store(results, sweep.name)
    p = sweep.preset(preset)
    lock, note = store.acquire_lock()
    summary = RunSummary(total=len(trials), skipped=0, launched=0, derived_written=0,
                         kernel_cells=cells, kernel_computations=comps)
    if note:
        summary.notes.append(note)
        log.warning(note)
    if fault is None and os.environ.get("SYMSWEEP_CRASH_AT_STEP"):
        ids = [s for s in os.environ.get("SYMSWEEP_CRASH_TRIALS", "").split(",") if s]
        fault = {"crash_at_step": int(os.environ["SYMSWEEP_CRASH_AT_STEP"]), "trials": ids}
    fs_root = results if "://" in results else os.path.abspath(results)
    ctx = {"results": fs_root, "sweep": sweep.name, "preset": preset,
           "code_version": code_version(), "tiles_root": fs_root,
           "data_dir": os.path.abspath(data_dir) if data_dir else None,
           "cache_dir": os.path.abspath(cache_dir) if cache_dir else None,
           "fault": dict(fault) if fault else None}
    tracker = None
    stop_hb = threading.Event()
    lost: list[str] = []  # set by the heartbeat when the sweep must stop

    def heartbeat() -> None:
        # Every failure is logged; once the lock has not been refreshed for nearly the stale
        # time (another driver could then take it over), or another driver holds it, the sweep
        # is stopped: SIGINT to the main thread, which Tune turns into a clean stop.
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
            import signal

            # a real SIGINT to the main thread (wakes a blocking wait, unlike interrupt_main)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return

    hb = threading.Thread(target=heartbeat, daemon=True, name="driver-lock-heartbeat")
    hb.start()
    store.clear_running()  # in-flight markers of a dead driver's attempts: none runs now
    started_ray = False
    finished = False
    try:
        store.write_manifest({
            "sweep": sweep.name, "preset": preset, "source": sweep.source, "dedupe": dedupe,
            # resume checks the sweep file it is given against this (it never loads `source`)
            "source_sha256": (file_sha256(sweep.source) if sweep.source and
                              os.path.isfile(sweep.source) else None),
            "only": dict(only) if only else None, "results": fs_root,
            # --set: resume applies them again, so it continues the same trials
            "overrides": dict(getattr(sweep, "overrides", {}) or {}) or None,
            "success_train_acc": p.success_train_acc, "data_dir": ctx["data_dir"],
            "cache_dir": ctx["cache_dir"], "written_at": now_utc().isoformat(),
            "trials": [t.to_dict() for t in trials],
        })
        if tracking:
            import json

            from orchestrator.tracking import Tracker

            # one parent MLflow run per invocation, the attempt runs nested under it
            tracker = Tracker(store, mlflow_uri=mlflow_uri, preset=preset,
                              source=sweep.source, code_version=ctx["code_version"],
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
        if todo:
            env = _ray_env(todo)
            os.environ.update({k: v for k, v in env.items() if k.startswith(("RAY_", "TUNE"))})
            started_ray = ensure_ray(address, num_cpus, env)
            _run_tune(sweep, todo, trials, ctx, store, summary, tracker,
                      max_failures if max_failures is not None else p.max_failures, progress,
                      console)
            if lost:  # Tune stopped on the heartbeat's SIGINT
                raise LockLostError(lost[0])
        summary.derived_written += materialize_derived(store, trials, ctx)
        finished = True
    except KeyboardInterrupt:
        if lost:  # the heartbeat's SIGINT outside Tune
            raise LockLostError(lost[0]) from None
        raise
    finally:
        if tracker is not None:
            tracker.stop("FINISHED" if finished else "FAILED")
        if started_ray:
            import ray

            ray.shutdown()
            stop_reaper()
        if finished:
            _compact_after_run(store, lock, summary)
        try:  # no attempt of this driver runs any more (Ray is shut down or never started)
            store.clear_running()
        except Exception as ex:  # a leftover marker never counts without a live driver
            log.warning("could not remove in-flight markers under %s (%s)", store.running_dir,
                        ex)
        stop_hb.set()
        try:
            store.release_lock(lock)
        except Exception as ex:  # e.g. the access the heartbeat lost: the error above stands
            log.error("could not release the driver lock %s (%s: %s); a later driver on this "
                      "host takes it over once this process has ended", store.lock_path,
                      type(ex).__name__, ex)
    summary.wall_s = time.time() - t_start
    return summary


def trial_resources(config: dict) -> Any:
    """Tune's resource request of one trial (config = {"trial": Trial dict, ...}): CPU, GPU
    and ``memory`` (bytes, from `memory_requests`) in one bundle; a kernel trial with tile
    GPUs gets a second bundle for its tiles."""
    from ray import tune

    r = config["trial"]["resources"]
    if config["trial"]["kind"] == "kernel" and r.get("tile_gpu", 0) > 0:
        first = {"CPU": max(r.get("cpu", 1), 0.01)}
        if r.get("memory", 0) > 0:
            first["memory"] = r["memory"]
        return tune.PlacementGroupFactory(
            [first, {"CPU": r.get("tile_cpu", 1), "GPU": r["tile_gpu"]}])
    bundle = {"CPU": r.get("cpu", 1)}
    if r.get("gpu", 0) > 0:
        bundle["GPU"] = r["gpu"]
    if r.get("memory", 0) > 0:  # bytes of host RAM (see memory_requests)
        bundle["memory"] = r["memory"]
    return tune.PlacementGroupFactory([bundle])


def _node_memory() -> float | None:
    """Largest ``memory`` resource (bytes) of an alive Ray node, None when Ray reports none."""
    import ray

    sizes = [float(n.get("Resources", {}).get("memory", 0)) for n in ray.nodes()
             if n.get("Alive")]
    return max(sizes) if sizes and max(sizes) > 0 else None


def memory_requests(trials: list[Trial], node_memory: float | None) -> list[dict[str, Any]]:
    """Trial dicts whose resources carry ``memory`` (bytes): the preset's value if it sets
    one, else the estimated peak (`orchestrator.plan.trial_memory`). A request above the
    largest node (node_memory) would never be scheduled, so it is capped to that node's
    memory with a warning naming the trial (it then runs alone there and may still run out)."""
    from orchestrator.plan import trial_memory

    out = []
    for t in trials:
        d = t.to_dict()
        need = float(t.resources.get("memory") or trial_memory(t))
        if node_memory is not None and need > node_memory:
            log.warning("trial %s (%s %s) needs about %.1f GB of memory by estimate, more than "
                        "the largest Ray node's %.1f GB; requesting %.1f GB, so it runs alone "
                        "and may run out of memory (use a larger node or fewer images)",
                        t.trial_id, t.kind, t.config.get("arch"), need / 1e9,
                        node_memory / 1e9, node_memory / 1e9)
            need = node_memory
        d["resources"]["memory"] = need
        out.append(d)
    return out


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


def _run_tune(sweep: Sweep, todo: list[Trial], trials: list[Trial], ctx: dict, store: Store,
              summary: RunSummary, tracker: Any, max_failures: int, progress: bool,
              console: Any) -> None:
    import ray
    from ray import tune

    from orchestrator.tracking import MlflowLiveCallback, ProgressCallback

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "100")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # kernels first; cells sharing tiles (gap/lap4/lap8 of one transform) far apart, so that
    # the second finds the first's tiles in the cache instead of computing them concurrently
    order = sorted(todo, key=lambda t: (t.kind != "kernel", t.config.get("arch") not in
                                        FULL_COV_ARCHS, t.config.get("arch")))

    def on_complete(trial_id: str) -> None:
        # derived cells are written once after the run (run_sweep), not here: re-reading the
        # store after every source trial is quadratic in the number of attempts
        if tracker is not None:
            tracker.poke()

    cb = ProgressCallback(total=len(todo), title=f"{sweep.name} [{ctx['preset']}]",
                          on_attempt_end=on_complete, enabled=progress, console=console)
    for fn in (sweep.workers or {}).values():
        ship_by_value(fn)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, workers=dict(sweep.workers or {})),
        trial_resources)
    # Tune's experiment state is scratch: the store (parts, trial-keyed checkpoints) is the
    # record and nothing reads Tune's state again (no Tuner.restore). So each run deletes the
    # `_tune/` leftovers of earlier runs (finished or killed: this driver holds the sweep's
    # lock, none of them is running) before it starts, and its own experiment dir when it
    # ends. Deleting rather than reusing one experiment name: Tune would mix the trial dirs
    # and experiment-state files of different runs in one directory.
    storage = os.path.join(ctx["results"], sweep.name, "_tune") if "://" not in ctx["results"] \
        else f"{ctx['results']}/{sweep.name}/_tune"
    n_old = clear_tune_state(ctx["results"], sweep.name)
    if n_old:
        log.info("removed %d Ray Tune state dir(s) of earlier runs under %s", n_old, storage)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(memory_requests(order, _node_memory())),
                     "ctx": ctx},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            trial_name_creator=lambda t: t.config["trial"]["trial_id"],
            trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{ctx['preset']}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # the live MLflow view logs from here, the driver (tracking.py says why)
            callbacks=[cb] + ([MlflowLiveCallback(tracker)] if tracker is not None else []),
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
        clear_tune_state(ctx["results"], sweep.name)
    # trials that ended on bad input (UserError) completed for Tune but failed for us
    user_errors = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("user_error"))
    del grid  # the store, not Tune's result files, is the record
    summary.retries = cb.retries
    summary.failed = cb.failed + user_errors
    ids = {t.trial_id for t in todo}
    df, _ = store.latest()
    st = df[df["trial_id"].isin(ids)]["status"]
    summary.completed = int((st == "completed").sum())
    summary.diverged = int((st == "diverged").sum())
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
    store = Store(results, sweep.name)
    fs_root = results if "://" in results else os.path.abspath(results)
    ctx = {"results": fs_root, "sweep": sweep.name, "preset": preset,
           "code_version": code_version(), "tiles_root": fs_root, "fault": None}
    done = store.done_ids()
    out = []
    for t in trials:
        if t.derived_from is None and t.trial_id not in done:
            worker = (sweep.workers or {}).get(t.kind) or _default_worker(t.kind)
            out.append(execute_trial(t, ctx, worker))
    materialize_derived(store, trials, ctx)
    return out
