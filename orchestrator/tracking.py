"""MLflow: a live view of a running sweep, and a mirror of the results store.

The Parquet part files are the record; MLflow is a view of them, rebuilt from them when needed.

Live view (issue 15 item 2). Each trial reports every history point it logs (step, metrics,
and the time the trial measured it: `orchestrator.store.TIME_KEY`, its own clock) through
``ray.tune.report``; `MlflowLiveCallback`, a Tune callback on the driver (what Ray's
``MLflowLoggerCallback`` does), hands the points to the `Tracker`, whose one background thread
logs them: one MLflow run per trial attempt, each point with its step and measured time, so
MLflow's step and wall-time axes show the curve while the trial trains. Logging from the
driver, not from the workers, keeps the tracking server on the head's loopback
(``cluster/*.yaml`` start it on 127.0.0.1): workers logging themselves would need it exposed
on the cluster network (and a SQLite store cannot be shared between machines at all).

One parent run per driver invocation (`symsweep run` / `resume`), tagged ``symsweep.invocation``,
with MLflow's own provenance tags (``mlflow.source.name`` = the sweep file,
``mlflow.source.type`` = LOCAL, ``mlflow.source.git.commit`` / ``.branch`` / ``.repoURL`` of
the code, ``mlflow.user``); every attempt run of the invocation is nested under it
(``mlflow.parentRunId``) and carries the same provenance tags.

The sweep's experiment carries ``mlflow.experimentKind`` = ``custom_model_development``
(`EXPERIMENT_KIND_TAG`), set at creation or, for an experiment of an older store, at the first
sync of a tracker, so MLflow 3's UI shows it as model training, not GenAI.

Mirror. When an attempt's part file exists, the mirror completes the attempt's run from the
part: the run the live view opened for (trial_id, attempt) when there is one (found in this
process or, after a restart, by its tags), else a new run. It logs only the history points the
run lacks (keyed by metric and step, so nothing is logged twice), then the final metrics, the
params, tags (trial_id, status, preset, attempt, part file, ...) and ``config.json``, ends the
run, and sets ``symsweep.mirrored`` last. A crash never leaves MLflow as the only copy: the
trial writes each point to the results root (its in-flight history) before it reports it, and
its part before the mirror completes the run; an attempt that dies without its part is given a
failed row from its in-flight history (`Store.salvage_dead_attempts`, by the trial's next
attempt or the next driver), which then completes its live run like any other. A live run
whose attempt left nothing (no marker, no part) is ended as KILLED. A deleted ``mlflow.db`` is
rebuilt from the parts at the next `resume`, each point at its measured time (parts written
before the time was recorded use the attempt's finish time).

Faults: a run counts as mirrored only once fully logged (``symsweep.mirrored`` is set last); a
run a killed driver left half-mirrored (a part_file tag, no mark) is deleted and mirrored again
at the next sync. The first use of a shared SQLite store (schema creation and migration) is
serialised across processes by a file lock ``<db>.lock``, since drivers starting at once left
it half-migrated; a store MLflow cannot open is reported in one line naming the fix. A part
whose row, history or config cannot be read is not mirrored (said loudly) and tried again at
the next start, never mirrored as empty. An MLflow failure logs a warning and never stops a
sweep.
"""

from __future__ import annotations

import getpass
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.store import TIME_KEY, Store, history_metrics, parse_part_name
from workers.durable import disk_full
from workers.vocab import Status

log = logging.getLogger("symsweep")

MIRRORED_TAG = "symsweep.mirrored"  # set last: the run is completely logged
SEARCH_PAGE = 5000  # runs per search_runs page (MLflow's own maximum for one page)
LIVE_TAG = "symsweep.live"  # "1": opened by the live view while the attempt ran
INVOCATION_TAG = "symsweep.invocation"  # "1" on the parent run of one driver invocation
# MLflow 3's UI chooses an experiment's page from this experiment tag (values in its JS bundle:
# genai_development, custom_model_development, ...; no Python constant); without it the UI
# guesses and may open a sweep on the GenAI overview instead of the runs table
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
INIT_LOCK_TIMEOUT_S = 600.0  # waiting for another process's schema migration
LIVE_FLUSH_S = 2.0  # live points reach MLflow within about this long
SYNC_S = 15.0  # part files are looked for at least this often (and after every trial)
FAIL_SAY_S = 300.0  # MLflow failures after the first are said at most this often


class MlflowStoreError(RuntimeError):
    """The MLflow store cannot be opened; the message is one line that names the fix."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute with four slashes), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def open_store(uri: str) -> Any:
    """An MlflowClient; for SQLite, its store opened and at MLflow's schema.

    For SQLite, the first opening (which creates and migrates the schema) holds the file lock
    ``<db>.lock`` (the ``filelock`` package), so drivers starting at once do not migrate the
    same file concurrently. Raises `MlflowStoreError` (one line: what is wrong, how to fix it)
    when the database cannot be opened, e.g. a schema left half-migrated.
    """
    from filelock import FileLock, Timeout
    from mlflow.tracking import MlflowClient

    for name in ("alembic", "mlflow", "sqlalchemy"):  # mlflow sets INFO on import
        logging.getLogger(name).setLevel(logging.WARNING)
    db = sqlite_path(uri)
    if db is None:  # a server: its trouble may pass, the caller warns and tries again
        return MlflowClient(tracking_uri=uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock", timeout=INIT_LOCK_TIMEOUT_S):
            # the client may open the store already: both inside the lock
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates / verifies the schema
    except Timeout as ex:
        raise MlflowStoreError(
            f"MLflow tracking store {db} is locked by another process for more than "
            f"{INIT_LOCK_TIMEOUT_S:.0f} s ({ex}); if no symsweep driver is starting, delete "
            f"{db}.lock") from ex
    except Exception as ex:
        what = " ".join(f"{type(ex).__name__}: {ex}".split())[:300]
        raise MlflowStoreError(
            f"MLflow tracking store {db} cannot be opened ({what}); delete {db} (the Parquet "
            "parts are the record: the next `symsweep resume` mirrors every run again) or pass "
            "--mlflow-uri") from ex
    return client


def default_mlflow_uri(store: Store) -> str:
    """sqlite:///<results>/mlflow.db for a local results root, else a local ./mlflow.db."""
    import pyarrow.fs as pafs

    if isinstance(store.fs, pafs.LocalFileSystem):
        Path(store.base).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store.layout.mlflow_db}"
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def _ms(ts: Any) -> int:
    try:
        return int(ts.timestamp() * 1000)
    except Exception:
        return int(time.time() * 1000)


def source_tags(source: str | None) -> dict[str, str]:
    """MLflow's standard provenance tags of this invocation: ``mlflow.source.name`` (the sweep
    file), ``mlflow.source.type`` (LOCAL), ``mlflow.user`` and, when the code runs from a git
    checkout, ``mlflow.source.git.commit`` / ``.branch`` / ``.repoURL`` of that checkout (MLflow's
    own git helpers, on this package's directory: the code that runs, not the console
    script's location)."""
    from mlflow.utils import mlflow_tags as mt
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    here = str(Path(__file__).resolve().parent)
    tags = {mt.MLFLOW_SOURCE_NAME: str(source or "symsweep"), mt.MLFLOW_SOURCE_TYPE: "LOCAL"}
    try:
        tags[mt.MLFLOW_USER] = getpass.getuser()
    except Exception as ex:  # no user name (some containers): say so, do not invent one
        log.warning("MLflow: user name unknown (%s); runs carry no mlflow.user", ex)
    for key, fn in ((mt.MLFLOW_GIT_COMMIT, get_git_commit), (mt.MLFLOW_GIT_BRANCH,
                                                             get_git_branch),
                    (mt.MLFLOW_GIT_REPO_URL, get_git_repo_url)):
        v = fn(here)
        if v:
            tags[key] = str(v)
    return tags


class Tracker:
    """MLflow live view and mirror of one sweep (see the module docstring).

    ``invocation``: when given (the driver of a `run` / `resume`), a parent run is opened for
    this invocation with these params (preset, selection, overrides, ...) and ``source`` (the
    sweep file) as ``mlflow.source.name``; every attempt run is nested under it. Without it
    (rebuilding the mirror, tests) runs are created unnested.
    """

    def __init__(self, store: Store, *, mlflow_uri: str | None = None, preset: str | None = None,
                 invocation: Mapping[str, Any] | None = None, source: str | None = None,
                 code_version: str | None = None):
        self.store = store
        self.uri = mlflow_uri or default_mlflow_uri(store)
        self.preset = preset
        self.invocation = dict(invocation) if invocation is not None else None
        self.source = source
        self.code_version = code_version
        self.parent_run_id: str | None = None
        self._tags: dict[str, str] | None = None  # provenance tags, computed once
        self._logged: set[str] | None = None
        self._done_keys: set[tuple[str, int]] = set()  # (trial_id, attempt) mirrored
        self._live: dict[tuple[str, int], str] = {}  # (trial_id, attempt) -> run, unmirrored
        self._points: dict[str, set[tuple[str, int]]] = {}  # run -> (metric, step) logged
        self._mine: set[str] = set()  # live runs this process opened
        self._stale: set[str] = set()  # live runs of earlier invocations still RUNNING
        self._dropped: set[tuple[str, int]] = set()  # attempts whose live run was deleted
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._exp_id: str | None = None
        self._poked = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # MLflow calls that failed (each said, at most every FAIL_SAY_S)
        self._first_failure: str | None = None
        self._last_failure: str | None = None
        self._said_at = float("-inf")
        self._unsaid = 0  # failures since the last line about them
        self._final_sync_failed = False
        self._client_obj: Any = None
        self.broken: str | None = None  # the one-line error once the store failed to open
        self.logged_runs = 0
        self.live_points = 0  # metric values logged by the live view
        self.repaired_runs = 0  # half-logged runs (driver killed mid-log) deleted, re-mirrored
        self._threshold: float | None = None
        for name in ("alembic", "mlflow", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)

    # ------------------------------------------------------------------ thread control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mlflow-sync")
        self._thread.start()

    def poke(self) -> None:
        """Look for new part files now (a trial ended)."""
        self._poked.set()
        self._wake.set()

    def add_point(self, trial_id: str, attempt: int, config: Mapping[str, Any], step: int,
                  time_ms: int, metrics: Mapping[str, float]) -> None:
        """Queue one live history point of an attempt (called by `MlflowLiveCallback` on the
        driver's main thread; logged by the tracker's thread within `LIVE_FLUSH_S`)."""
        self._queue.put((trial_id, int(attempt), dict(config), int(step), int(time_ms),
                         dict(metrics)))

    def stop(self, status: str = "FINISHED") -> None:
        """Log what is queued, mirror every part, end this invocation's unmirrored live runs
        (KILLED: their attempt wrote no part) and its parent run with ``status``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=600)
        self._guarded(self.flush_live)
        before = self.failures
        self.sync()
        self._guarded(lambda: self._finish(status))
        self._final_sync_failed = self.failures > before

    def failure_note(self) -> str | None:
        """After `stop`: one line on the MLflow failures of this run (None when there were
        none), for the run's summary: how many, the first and last, and whether the final
        mirror got everything in."""
        if self.broken is not None:
            return f"MLflow tracking stopped: {self.broken}; the results are in Parquet"
        if not self.failures:
            return None
        first, last = self._first_failure, self._last_failure
        return (f"MLflow at {self.uri}: {self.failures} call(s) failed during this run (first: "
                f"{first}" + (f"; last: {last}" if last != first else "") + "); " +
                ("the final mirror failed too: every result is in Parquet, and the next run "
                 "or resume of this sweep mirrors what MLflow lacks" if self._final_sync_failed
                 else "the final mirror succeeded: every finished attempt is in MLflow (live "
                 "curve points logged while it failed are missing)"))

    def _loop(self) -> None:
        last_sync = float("-inf")
        while not self._stop.is_set():
            self._guarded(self.flush_live)
            if self._poked.is_set() or time.monotonic() - last_sync >= SYNC_S:
                self._poked.clear()
                self.sync()
                last_sync = time.monotonic()
            self._wake.wait(LIVE_FLUSH_S)
            self._wake.clear()

    # ------------------------------------------------------------------ errors
    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """Run fn; an MLflow failure is said (once) and never stops the sweep."""
        if self.broken is not None:
            return 0
        try:
            return fn()
        except Exception as ex:
            if disk_full(ex) is None:
                return self._mlflow_failed(ex)
            # a full disk stops the sweep (the driver says it in one line): raised in the
            # driver's thread; the background flush only stops tracking
            self.broken = f"no space left on device under {self.uri}"
            if threading.current_thread() is threading.main_thread():
                raise
            log.error("MLflow tracking stopped: %s", self.broken)
            return 0

    def _mlflow_failed(self, ex: Exception) -> int:
        """Say an MLflow failure; the sweep goes on, Parquet is the record. Every failure is
        counted: the first is said at once, later ones at most every `FAIL_SAY_S` (how many
        since, the last one), and `failure_note` sums them up for the run's summary."""
        if isinstance(ex, MlflowStoreError):
            self.broken = str(ex)
            log.error("%s", ex)
            return 0
        what = " ".join(f"{type(ex).__name__}: {ex}".split())[:300]
        self.failures += 1
        self._unsaid += 1
        self._first_failure = self._first_failure or what
        self._last_failure = what
        now = time.monotonic()
        if self.failures == 1:
            log.warning("MLflow tracking at %s failed (%s); the sweep goes on, results are in "
                        "Parquet; later failures are counted and said every %.0f s", self.uri,
                        what, FAIL_SAY_S)
        elif now - self._said_at >= FAIL_SAY_S:
            log.warning("MLflow tracking at %s: %d more failure(s) (%d in all), the last: %s",
                        self.uri, self._unsaid, self.failures, what)
        else:
            return 0
        self._said_at, self._unsaid = now, 0
        return 0

    def sync(self) -> int:
        """Log every part file not yet in MLflow; returns how many runs were completed."""
        return self._guarded(self._sync)

    # ------------------------------------------------------------------ MLflow objects
    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = open_store(self.uri)
        return self._client_obj

    def _experiment(self, client: Any) -> str:
        """The sweep's experiment id, the experiment created at first use with
        `EXPERIMENT_KIND_TAG`; an experiment of an older store, created without the tag, is
        given it here (the first sync of every tracker); a kind already set is left alone.
        An experiment deleted in MLflow (only marked deleted: no run can be created in it,
        mlflow/mlflow issue 2651) raises `MlflowStoreError` naming the command that restores
        it; mirroring then stops for this invocation (the sweep goes on)."""
        if self._exp_id is None:
            exp = client.get_experiment_by_name(self.store.sweep)
            if exp is not None and exp.lifecycle_stage == "deleted":
                raise MlflowStoreError(
                    f"MLflow experiment '{self.store.sweep}' (id {exp.experiment_id}) in "
                    f"{self.uri} was deleted, so nothing of this sweep is mirrored there (the "
                    "sweep goes on; its results are in Parquet); restore it with "
                    f"`MLFLOW_TRACKING_URI={self.uri} mlflow experiments restore -x "
                    f"{exp.experiment_id}` and the next run or resume mirrors what it missed")
            if exp is None:
                art = None
                if self.uri.startswith("sqlite:///"):
                    art = Path(self.store.layout.mlflow_artifacts).resolve().as_uri()
                self._exp_id = client.create_experiment(
                    self.store.sweep, artifact_location=art,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                self._exp_id = exp.experiment_id
                if not exp.tags.get(EXPERIMENT_KIND_TAG):
                    client.set_experiment_tag(self._exp_id, EXPERIMENT_KIND_TAG,
                                              EXPERIMENT_KIND)
        return self._exp_id

    def _provenance(self) -> dict[str, str]:
        if self._tags is None:
            self._tags = source_tags(self.source) if self.invocation is not None else {}
            if self.code_version:
                self._tags["code_version"] = str(self.code_version)
        return dict(self._tags)

    def _parent(self, client: Any, exp_id: str) -> str | None:
        """This invocation's parent run (opened at first use), None without an invocation."""
        if self.invocation is None:
            return None
        if self.parent_run_id is None:
            from mlflow.entities import Param

            tags = {**self._provenance(), INVOCATION_TAG: "1", "sweep": self.store.sweep,
                    "preset": str(self.preset)}
            name = f"{self.store.sweep}-{self.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
            run = client.create_run(exp_id, tags=tags, run_name=name)
            self.parent_run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(self.invocation.items())
                      if v is not None]
            if params:
                client.log_batch(self.parent_run_id, params=params)
        return self.parent_run_id

    def _child_tags(self, client: Any, exp_id: str) -> dict[str, str]:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = self._provenance()
        parent = self._parent(client, exp_id)
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        return tags

    # ------------------------------------------------------------------ live view
    def flush_live(self) -> int:
        """Log the queued live points (one batch per attempt run); returns values logged.
        Points of an attempt already mirrored from its part are dropped (the part has them)."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not items:
            return 0
        from mlflow.entities import Metric

        client = self._client()
        exp_id = self._experiment(client)
        if self._logged is None:  # live runs of an earlier driver are found before new ones
            self._logged = self._existing(client, exp_id)
        by_key: dict[tuple[str, int], list[tuple]] = {}
        for it in items:
            by_key.setdefault((it[0], it[1]), []).append(it)
        n = 0
        for key, pts in by_key.items():
            if key in self._done_keys or key in self._dropped:
                continue
            rid = self._live.get(key) or self._open_live(client, exp_id, key, pts[0][2])
            seen = self._points_of(client, rid, {m for p in pts for m in p[5]})
            batch = []
            for _tid, _att, _cfg, step, t_ms, values in pts:
                for name, v in values.items():
                    if (name, step) not in seen:
                        seen.add((name, step))
                        batch.append(Metric(name, float(v), t_ms, step))
            try:
                for i in range(0, len(batch), 1000):
                    client.log_batch(rid, metrics=batch[i:i + 1000])
            except Exception:
                if not self._deleted_live(client, rid, key):
                    raise
                continue  # the other attempts' points still go out
            n += len(batch)
        self.live_points += n
        return n

    def _deleted_live(self, client: Any, rid: str, key: tuple[str, int]) -> bool:
        """True (said once as a warning) when the live run ``rid`` of attempt ``key`` was
        deleted in MLflow while the attempt ran: no point can be logged to it any more
        (mlflow/mlflow issue 689), so its live points are dropped from now on; its part is
        still mirrored, to a new run. False when the run is active (another failure)."""
        if client.get_run(rid).info.lifecycle_stage != "deleted":
            return False
        log.warning("MLflow: the live run of trial %s attempt %s (%s) was deleted while it "
                    "ran; its points are no longer shown live, its results are mirrored to a "
                    "new run when it ends", key[0], key[1], rid)
        self._dropped.add(key)
        self._live.pop(key, None)
        return True

    def _run_name(self, cfg: Mapping[str, Any], attempt: Any) -> str:
        return (f"{cfg.get('inference')}-{cfg.get('arch')}-{cfg.get('transform')}"
                f"-s{cfg.get('seed')}-a{attempt}")

    def _open_live(self, client: Any, exp_id: str, key: tuple[str, int],
                   cfg: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        tags = {**self._child_tags(client, exp_id), "trial_id": key[0], "attempt": str(key[1]),
                "sweep": self.store.sweep, "preset": str(self.preset), "status": "running",
                LIVE_TAG: "1"}
        run = client.create_run(exp_id, tags=tags, run_name=self._run_name(cfg, key[1]))
        rid = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(cfg.items())]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i:i + 100])
        self._live[key] = rid
        self._mine.add(rid)
        self._points[rid] = set()
        return rid

    def _points_of(self, client: Any, rid: str, names: set[str]) -> set[tuple[str, int]]:
        """(metric, step) pairs the run holds for ``names``: tracked for runs of this process,
        read from MLflow for a run an earlier driver opened."""
        seen = self._points.setdefault(rid, set())
        if rid not in self._mine:
            for name in names - {m for m, _ in seen}:
                seen.update((name, int(m.step)) for m in client.get_metric_history(rid, name))
        return seen

    def _finish(self, status: str) -> None:
        """End this invocation: live runs whose attempt wrote no part (its process died) are
        ended KILLED, with a note; then the parent run, with ``status``."""
        if self._client_obj is None:
            return
        client = self._client()
        for key, rid in list(self._live.items()):
            if rid in self._mine or rid in self._stale:
                self._kill(client, rid, key)
        if self.parent_run_id is not None:
            client.set_terminated(self.parent_run_id, status=status)

    def _kill(self, client: Any, rid: str, key: tuple[str, int]) -> None:
        client.set_tag(rid, "mlflow.note.content",
                       f"attempt {key[1]} of trial {key[0]} ended without writing its part "
                       "file or leaving an in-flight record (its process died)")
        client.set_terminated(rid, status="KILLED")
        self._stale.discard(rid)

    # ------------------------------------------------------------------ mirror
    def _existing(self, client: Any, exp_id: str) -> set[str]:
        """Part files with a completely logged run. A run with a part_file tag but not marked
        mirrored (its driver was killed while logging it: RUNNING, metrics missing) is
        deleted, so that its part is mirrored again; runs logged before the mark existed count
        when MLflow saw them terminated (set_terminated was their last call). Unmirrored live
        runs are indexed by (trial_id, attempt), so that their part completes them."""
        names: set[str] = set()
        # Every page is read before anything is deleted or terminated: MLflow's page token is
        # an offset, so deleting runs of one page shifts the next one past as many runs,
        # which then looked unmirrored and were mirrored twice (mlflow/mlflow issue 20546's
        # pattern; at 5,010 runs with 3 half-logged, a sync left 5,013 runs for 5,010 parts).
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs([exp_id], max_results=SEARCH_PAGE, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        for r in runs:
            tags = r.data.tags
            part = tags.get("part_file")
            mark = tags.get(MIRRORED_TAG)
            if tags.get(INVOCATION_TAG) == "1":
                # a driver holds the sweep's lock: another invocation still RUNNING died
                if self.invocation is not None and r.info.status == "RUNNING" and \
                        r.info.run_id != self.parent_run_id:
                    client.set_tag(r.info.run_id, "mlflow.note.content",
                                   "this invocation's driver died before it ended")
                    client.set_terminated(r.info.run_id, status="KILLED")
                continue
            if not part:
                if tags.get(LIVE_TAG) == "1" and mark != "1" and tags.get("attempt"):
                    key = (tags.get("trial_id", ""), int(tags["attempt"]))
                    self._live.setdefault(key, r.info.run_id)
                    if r.info.status == "RUNNING":
                        self._stale.add(r.info.run_id)
                continue
            if mark == "1" or (mark is None and r.info.status != "RUNNING"
                               and "symsweep.version" not in tags):
                names.add(part)
                info = parse_part_name(part)
                if info is not None:
                    self._done_keys.add((info.trial_id, info.attempt))
            else:
                log.warning("MLflow run %s of part %s was left half-logged (driver killed "
                            "while mirroring); deleting it and mirroring the part again",
                            r.info.run_id, part)
                client.delete_run(r.info.run_id)
                self.repaired_runs += 1
        return names

    def _read_part(self, name: str) -> tuple[dict, list[dict]]:
        """Row and history of one part; raises when either file cannot be read (an unreadable
        history is not an empty one)."""
        # through the store: after `symsweep compact` the part lives in a compacted file
        row, hist = self.store.read_part(name)
        json.loads(row.get("config_json") or "{}")  # a corrupt config raises here
        return row, hist

    def _sync(self) -> int:
        if self.invocation is not None and self.parent_run_id is None:  # at start, once
            client = self._client()
            self._parent(client, self._experiment(client))
        parts = self.store.parts()
        if self._logged is not None and all(p.name in self._logged for p in parts):
            return 0
        client = self._client()
        exp_id = self._experiment(client)
        if self._logged is None:
            self._logged = self._existing(client, exp_id)
        n = 0
        for p in parts:
            if p.name in self._logged:
                continue
            try:
                row, hist = self._read_part(p.name)
            except Exception as ex:
                # Not mirrored (nor marked): `status` names a corrupt part; after it is
                # repaired or deleted, the next start mirrors what is there.
                log.warning("MLflow mirror: part %s not mirrored, it cannot be read (%s: %s); "
                            "`symsweep status` lists corrupt parts", p.name, type(ex).__name__,
                            " ".join(str(ex).split())[:200])
                self._logged.add(p.name)
                continue
            self._log_run(client, exp_id, p.name, row, hist)
            self._logged.add(p.name)
            n += 1
        if self._stale:  # live runs of a dead driver whose attempt wrote no part
            for key, rid in list(self._live.items()):
                if rid in self._stale:
                    self._kill(client, rid, key)
                    del self._live[key]
        self.logged_runs += n
        return n

    def _log_run(self, client: Any, exp_id: str, part: str, row: dict, hist: list[dict]) -> None:
        """Complete the attempt's live run from its part, or create the run (see the module
        docstring); ``symsweep.mirrored`` is set last."""
        from mlflow.entities import Metric, Param, RunTag

        cfg = json.loads(row.get("config_json") or "{}")
        key = (str(row["trial_id"]), int(row["attempt"]))
        tags = {"trial_id": row["trial_id"], "status": row["status"],
                "preset": str(row.get("preset") or self.preset), "attempt": str(row["attempt"]),
                "part_file": part, "sweep": row["sweep"], "kind": str(row.get("kind")),
                "code_version": str(row.get("code_version")), "host": str(row.get("host"))}
        tags["symsweep.version"] = "2"  # runs of this version carry MIRRORED_TAG when complete
        tags["success"] = str(self._success(row)).lower()
        if row.get("derived_from"):
            tags["derived_from"] = row["derived_from"]
        if row.get("error"):
            tags["error"] = str(row["error"])[:5000]
        rid = self._live.pop(key, None)
        if rid is None:
            run = client.create_run(exp_id, start_time=_ms(row.get("started_at")),
                                    tags={**self._child_tags(client, exp_id), **tags},
                                    run_name=self._run_name(cfg, row["attempt"]))
            rid = run.info.run_id
            seen: set[tuple[str, int]] = set()
            params = [Param(k, str(v)[:6000]) for k, v in sorted(cfg.items())]
        else:  # the live run: its params are logged, some points too
            seen = self._points_of(client, rid, {str(h["metric"]) for h in hist})
            params = []
            client.log_batch(rid, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        ts = _ms(row.get("finished_at"))
        metrics = []
        for h in hist:
            name, step = str(h["metric"]), int(h["step"])
            if (name, step) not in seen:
                seen.add((name, step))
                t = h.get("measured_at")
                metrics.append(Metric(name, float(h["value"]), ts if t is None else _ms(t),
                                      step))
        final_step = int(row.get("steps") or 0)
        for k in ("best_test_acc", "test_acc", "test_mse", "val_acc", "train_acc", "wall_s",
                  "eta0"):
            v = row.get(k)
            if v is not None and v == v:
                metrics.append(Metric(f"final_{k}", float(v), ts, final_step))
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        client.log_batch(rid, tags=[RunTag("mlflow.note.content",
                                           f"symsweep part file {part}")])
        client.log_text(rid, json.dumps(cfg, indent=1, sort_keys=True), "config.json")
        client.set_terminated(rid, status={Status.FAILED: "FAILED",
                                           Status.INTERRUPTED: "KILLED"}.get(
            row["status"], "FINISHED"), end_time=ts)
        client.set_tag(rid, MIRRORED_TAG, "1")  # last: everything above is logged
        self._done_keys.add(key)
        self._points.pop(rid, None)
        self._stale.discard(rid)

    def _success(self, row: dict) -> bool:
        """The one definition of success (`analysis.successful`) at the threshold the tables
        use (`analysis.success_threshold` of the manifest)."""
        import pandas as pd

        from orchestrator.analysis import success_threshold, successful

        if self._threshold is None:
            self._threshold = success_threshold(self.store.read_manifest())
        return bool(successful(pd.DataFrame([row]), self._threshold).iloc[0])


# ====================================================================== live view callback
def _tune_callback_base() -> type:
    from ray.tune import Callback

    return Callback


def _tune_auto_keys() -> frozenset[str]:
    """Keys Tune adds to every result (iteration counters, times, host, ...): not metrics."""
    from ray.tune.result import AUTO_RESULT_KEYS

    return frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "attempt"}


class MlflowLiveCallback(_tune_callback_base()):  # type: ignore[misc]
    """Tune callback on the driver: every history point a trial reports (a result with
    ``step``, ``attempt`` and `orchestrator.store.TIME_KEY`, see ``runner.execute_trial``)
    goes to the `Tracker`, which logs it to the attempt's MLflow run with its step and the
    time the trial measured it. Tune's own result keys are not metrics; the point's metrics
    are selected as for the Parquet history (`orchestrator.store.history_metrics`)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self._skip = _tune_auto_keys()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the tracker (a thread, an
        # MLflow client) stays behind
        return {**self.__dict__, "tracker": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        step = result.get("step", result.get("steps"))
        if self.tracker is None or TIME_KEY not in result or "attempt" not in result or \
                step is None:
            return  # not a history point (e.g. the final summary of a trial)
        t = trial.config["trial"]
        metrics = history_metrics({k: v for k, v in result.items() if k not in self._skip})
        if metrics:
            self.tracker.add_point(t["trial_id"], int(result["attempt"]), t["config"],
                                   int(step), int(result[TIME_KEY]), metrics)
