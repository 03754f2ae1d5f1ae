"""MLflow mirror of the results store, and the live progress view of a running sweep.

The Parquet part files are the source of truth; `Tracker` mirrors each of them (one per trial
attempt) into MLflow exactly once: experiment = sweep, run = attempt, params = the trial's
config, metrics = its per-step history plus the final metrics, tags = trial_id, status,
preset, attempt, part file, and the config as the artifact ``config.json``. Mirroring runs in a
background thread of the driver (SQLite wants a single writer) and re-syncs at start, so
attempts finished while a killed driver could not log them appear after `resume`. An MLflow
failure logs a warning and never stops a sweep.

Faults: a run counts as mirrored only once fully logged (the tag ``symsweep.mirrored`` is set
last); a run a killed driver left half-logged (RUNNING, no metrics) is deleted and mirrored
again at the next sync. The first use of a shared SQLite store (schema creation and migration)
is serialised across processes by a file lock ``<db>.lock``, since drivers starting at once left
it half-migrated; a store MLflow cannot open is reported in one line naming the fix. A part
whose row, history or config cannot be read is not mirrored (said loudly) and tried again at
the next start, never mirrored as empty.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.store import Store

log = logging.getLogger("symsweep")

MIRRORED_TAG = "symsweep.mirrored"  # set last: the run is completely logged
INIT_LOCK_TIMEOUT_S = 600.0  # waiting for another process's schema migration


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
        return f"sqlite:///{store.base}/mlflow.db"
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def _ms(ts: Any) -> int:
    try:
        return int(ts.timestamp() * 1000)
    except Exception:
        return int(time.time() * 1000)


class Tracker:
    """Mirror a sweep's part files into MLflow (see module docstring)."""

    def __init__(self, store: Store, *, mlflow_uri: str | None = None, preset: str | None = None):
        self.store = store
        self.uri = mlflow_uri or default_mlflow_uri(store)
        self.preset = preset
        self._logged: set[str] | None = None
        self._exp_id: str | None = None
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._client_obj: Any = None
        self.broken: str | None = None  # the one-line error once the store failed to open
        self.logged_runs = 0
        self.repaired_runs = 0  # half-logged runs (driver killed mid-log) deleted, re-mirrored
        self._threshold: float | None = None
        for name in ("alembic", "mlflow", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)

    # ------------------------------------------------------------------ thread control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mlflow-sync")
        self._thread.start()

    def poke(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout=600)
        self.sync()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sync()
            self._event.wait(15)
            self._event.clear()

    # ------------------------------------------------------------------ sync
    def sync(self) -> int:
        """Log every part file not yet in MLflow; returns how many runs were created."""
        if self.broken is not None:
            return 0
        try:
            return self._sync()
        except MlflowStoreError as ex:
            self.broken = str(ex)
            log.error("%s", ex)
            return 0
        except Exception as ex:
            if not self._warned:
                log.warning("MLflow tracking at %s failed (%s: %s); the sweep goes on, results "
                            "are in Parquet", self.uri, type(ex).__name__, ex)
                self._warned = True
            return 0

    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = open_store(self.uri)
        return self._client_obj

    def _experiment(self, client: Any) -> str:
        if self._exp_id is None:
            exp = client.get_experiment_by_name(self.store.sweep)
            if exp is None:
                art = None
                if self.uri.startswith("sqlite:///"):
                    art = (Path(self.store.base) / "mlartifacts").resolve().as_uri()
                self._exp_id = client.create_experiment(self.store.sweep, artifact_location=art)
            else:
                self._exp_id = exp.experiment_id
        return self._exp_id

    def _existing(self, client: Any, exp_id: str) -> set[str]:
        """Part files with a completely logged run. A run with a part_file tag but not marked
        mirrored (its driver was killed while logging it: RUNNING, metrics missing) is
        deleted, so that its part is mirrored again; runs logged before the mark existed count
        when MLflow saw them terminated (set_terminated was their last call)."""
        names: set[str] = set()
        token = None
        while True:
            page = client.search_runs([exp_id], max_results=5000, page_token=token)
            for r in page:
                part = r.data.tags.get("part_file")
                if not part:
                    continue
                mark = r.data.tags.get(MIRRORED_TAG)
                if mark == "1" or (mark is None and r.info.status != "RUNNING"
                                   and "symsweep.version" not in r.data.tags):
                    names.add(part)
                else:
                    log.warning("MLflow run %s of part %s was left half-logged (driver killed "
                                "while mirroring); deleting it and mirroring the part again",
                                r.info.run_id, part)
                    client.delete_run(r.info.run_id)
                    self.repaired_runs += 1
            token = page.token
            if not token:
                return names

    def _read_part(self, name: str) -> tuple[dict, list[dict]]:
        """Row and history of one part; raises when either file cannot be read (an unreadable
        history is not an empty one)."""
        # through the store: after `symsweep compact` the part lives in a compacted file
        row, hist = self.store.read_part(name)
        json.loads(row.get("config_json") or "{}")  # a corrupt config raises here
        return row, hist

    def _sync(self) -> int:
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
        self.logged_runs += n
        return n

    def _log_run(self, client: Any, exp_id: str, part: str, row: dict, hist: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        cfg = json.loads(row.get("config_json") or "{}")
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
        name = (f"{cfg.get('inference')}-{cfg.get('arch')}-{cfg.get('transform')}"
                f"-s{cfg.get('seed')}-a{row['attempt']}")
        run = client.create_run(exp_id, start_time=_ms(row.get("started_at")), tags=tags,
                                run_name=name)
        rid = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(cfg.items())]
        ts = _ms(row.get("finished_at"))
        metrics = [Metric(h["metric"], float(h["value"]), ts, int(h["step"])) for h in hist]
        final_step = int(row.get("steps") or 0)
        for k in ("best_test_acc", "test_acc", "test_mse", "val_acc", "train_acc", "wall_s",
                  "eta0"):
            v = row.get(k)
            if v is not None and v == v:
                metrics.append(Metric(f"final_{k}", float(v), ts, final_step))
        for i in range(0, max(len(params), 1), 100):
            client.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        client.log_batch(rid, tags=[RunTag("mlflow.note.content",
                                           f"symsweep part file {part}")])
        client.log_text(rid, json.dumps(cfg, indent=1, sort_keys=True), "config.json")
        client.set_terminated(rid, status="FINISHED" if row["status"] != "failed" else "FAILED",
                              end_time=ts)
        client.set_tag(rid, MIRRORED_TAG, "1")  # last: everything above is logged

    def _success(self, row: dict) -> bool:
        """The one definition of success (`analysis.successful`) at the threshold the tables
        use (`analysis.success_threshold` of the manifest)."""
        import pandas as pd

        from orchestrator.analysis import success_threshold, successful

        if self._threshold is None:
            self._threshold = success_threshold(self.store.read_manifest())
        return bool(successful(pd.DataFrame([row]), self._threshold).iloc[0])


# ====================================================================== progress
def _tune_callback_base() -> type:
    from ray.tune import Callback

    return Callback


class ProgressCallback(_tune_callback_base()):  # type: ignore[misc]
    """Tune callback: counts done / running / failed / retried trials, ETA, live rich view."""

    def __init__(self, *, total: int, title: str, on_attempt_end: Callable[[str], None],
                 enabled: bool = True, console: Any = None):
        self.total = total
        self.title = title
        self.on_attempt_end = on_attempt_end
        self.enabled = enabled
        self.console = console
        self.running: set[str] = set()
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.t0: float | None = None
        self._live: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the driver-side hooks and the
        # live view stay behind.
        state = dict(self.__dict__)
        state.update(on_attempt_end=lambda _tid: None, console=None, _live=None)
        return state

    @staticmethod
    def _id(trial: Any) -> str:
        return trial.config["trial"]["trial_id"]

    def render(self) -> Any:
        from rich.table import Table

        finished = self.done + self.failed
        el = time.time() - self.t0 if self.t0 else 0.0
        eta = "?"
        if finished and el > 0:
            eta_s = (self.total - finished) * el / finished
            eta = time.strftime("%H:%M:%S", time.gmtime(eta_s))
        t = Table(title=self.title, show_edge=False)
        for c in ("done", "running", "failed", "pending", "retries", "elapsed", "ETA"):
            t.add_column(c, justify="right")
        pending = self.total - finished - len(self.running)
        t.add_row(str(self.done), str(len(self.running)), str(self.failed), str(pending),
                  str(self.retries), time.strftime("%H:%M:%S", time.gmtime(el)), eta)
        return t

    def __enter__(self) -> ProgressCallback:
        if self.enabled:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, refresh_per_second=2,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.t0 is None:
            self.t0 = time.time()
        self.running.add(self._id(trial))
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(self._id(trial))
        self.done += 1
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(self._id(trial))
        self.failed += 1
        self._end(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retries += 1
        self._end(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        # A trial's own log does not reach the driver (log_to_driver=False): what the driver
        # must say comes back in the trial's results.
        n = result.get("tiles_corrupt")
        if n:
            log.warning("trial %s: %s kernel tile(s) were corrupt or not their key's and were "
                        "recomputed: %s", self._id(trial), n,
                        result.get("tiles_corrupt_note") or "(no detail)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._refresh()

    def _end(self, trial: Any) -> None:
        try:
            self.on_attempt_end(self._id(trial))
        except Exception as ex:  # never let bookkeeping kill the sweep
            log.warning("after trial %s: %s", self._id(trial), ex)
        self._refresh()
