"""Results store: Parquet part files per trial attempt, a per-step history, DuckDB queries.

Layout under the results root (a local directory or any URI pyarrow understands):

    <root>/<sweep>/trials/<trial_id>-a<attempt>-<rand>.parquet   one row per finished attempt
    <root>/<sweep>/history/<same name>.parquet                   long format: step, metric, value
    <root>/<sweep>/sweep.json                                    what the last `run` expanded
    <root>/<sweep>/driver.lock                                   the live driver (host, pid, ...)
    <root>/<sweep>/running/<trial_id>.json                       an attempt in flight (see below)
    <root>/<sweep>/{trials,history}/compacted-<stamp>-<rand>.parquet   parts folded by `compact`

Every part file is written to a hidden temporary name and then renamed, so a reader never sees
half a file and two writers never share one. Readers skip hidden names; a part file that
exists but does not parse is reported as corrupt (never silently read or dropped).
The DuckDB view ``trials`` keeps the latest attempt per (sweep, trial_id); ``trials_all`` has
every attempt and ``history`` the per-step metrics.

Reading: one directory listing, then ONE pyarrow-dataset scan over all part files (a
multi-threaded read, not a ``pq.read_table`` per file). pyarrow datasets rather than DuckDB's
``read_parquet`` glob because they read through the same ``pyarrow.fs`` filesystem the writer
uses, so local paths, s3:// and gs:// work with the same credentials and no DuckDB ``httpfs``
extension to download at run time (clusters are often offline); DuckDB then queries the Arrow
table in memory. Only when that scan fails are the files read one by one, to name the corrupt
part(s) and keep the rest.

Compaction (``Store.compact``, ``symsweep compact``) writes each batch of folded parts as one
``compacted-*.parquet`` per directory, whose rows carry their part name (column ``part``) and
whose footer lists every folded part (key ``symsweep.parts``, so parts without history rows
count too). The compacted file is written atomically first, then the folded parts are deleted;
readers drop every loose part already listed in a compacted file, so the window between the two
steps (or a crash inside it) never double counts and never loses a row.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.driver_lock import STALE_AFTER_S, DriverLock, lock_is_live
from orchestrator.fsio import write_atomic
from orchestrator.layout import ResultsLayout
from workers.errors import ConfigError
from workers.vocab import DONE_STATUSES, STATUSES, Status

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")
TRIAL_SCHEMA = pa.schema([
    ("sweep", pa.string()),
    ("trial_id", pa.string()),
    ("attempt", pa.int64()),
    ("preset", pa.string()),
    ("kind", pa.string()),
    ("arch", pa.string()),
    ("inference", pa.string()),
    ("transform", pa.string()),
    ("seed", pa.int64()),
    ("width", pa.int64()),
    ("depth", pa.int64()),
    ("dataset", pa.string()),
    ("image_size", pa.int64()),
    ("train_size", pa.int64()),
    ("test_size", pa.int64()),
    ("status", pa.string()),
    ("best_test_acc", pa.float64()),
    ("test_acc", pa.float64()),
    ("test_mse", pa.float64()),
    ("val_acc", pa.float64()),
    ("train_acc", pa.float64()),
    ("best_train_acc", pa.float64()),
    ("steps", pa.int64()),
    ("start_step", pa.int64()),
    ("eta0", pa.float64()),
    # kernel cells with diag_reg_grid (workers/kernel_trial.py; null otherwise): the diag_reg
    # chosen on the validation split (x mean train-kernel diagonal; the row's metrics are at
    # it), the test metrics at the preset's fixed diag_reg, and the validation curve (JSON)
    ("chosen_diag_reg", pa.float64()),
    ("fixed_reg_test_acc", pa.float64()),
    ("fixed_reg_test_mse", pa.float64()),
    ("diag_reg_curve_json", pa.string()),
    ("wall_s", pa.float64()),
    ("error", pa.string()),
    ("derived_from", pa.string()),
    ("started_at", TS),
    ("finished_at", TS),
    ("code_version", pa.string()),
    ("node", pa.string()),
    ("host", pa.string()),
    # what the attempt computed on (workers.devices.device_info; GPU kernel tiles: the
    # device most of them ran on): JAX's backend, the device kind, the local device count
    ("backend", pa.string()),
    ("device_kind", pa.string()),
    ("device_count", pa.int64()),
    ("config_json", pa.string()),
    ("metrics_json", pa.string()),
    # a failed attempt's Python traceback (`error` is its one-line message); `symsweep show`
    ("traceback", pa.string()),
])
HISTORY_SCHEMA = pa.schema([
    ("sweep", pa.string()),
    ("trial_id", pa.string()),
    ("attempt", pa.int64()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    # when the trial measured the point (its own clock; null in parts written before it was
    # recorded): the time axis of MLflow's live view and of its rebuild from the parts
    ("measured_at", TS),
])
# key of a history point (a dict reported by a worker) holding the time it was measured, in
# integer milliseconds since the epoch (set by the trial, not by the worker)
TIME_KEY = "measured_at_ms"
HISTORY_NON_METRICS = frozenset({"step", "steps", TIME_KEY})
# interrupted: the attempt stopped on a stop request (orchestrator/stopping.py) after writing
# a checkpoint; like failed, not finished: a later attempt continues the trial
# the status column's values (workers/vocab.py); DONE_STATUSES: a finished result, which
# resume does not run again
COMPACT_PREFIX = "compacted-"  # never a part name: parse_part_name needs '-a<digits>-'
PARTS_KEY = b"symsweep.parts"  # footer key of a compacted file: JSON list of folded parts
PART_COL = "part"  # the part name of each row inside a compacted file
LATEST_SQL = (
    "select * exclude (_rn) from (select *, row_number() over (partition by sweep, trial_id "
    "order by attempt desc, finished_at desc) as _rn from trials_all) where _rn = 1"
)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def history_metrics(point: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of one history point: numbers other than the step and the time
    (booleans and text are not metrics). The same selection for the Parquet history and for
    MLflow's live view, so both hold the same points."""
    return {k: float(v) for k, v in point.items()
            if k not in HISTORY_NON_METRICS and isinstance(v, int | float)
            and not isinstance(v, bool)}


def _to_record(row: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for f in TRIAL_SCHEMA:
        v = row.get(f.name)
        if v is not None and pa.types.is_floating(f.type):
            v = float(v)
        elif v is not None and pa.types.is_integer(f.type):
            v = int(v)
        elif v is not None and pa.types.is_string(f.type) and not isinstance(v, str):
            v = str(v)
        rec[f.name] = v
    return rec


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """t with exactly schema's columns, in order, cast to schema's types; a column an older
    file lacks is null. Raises (ArrowInvalid / ArrowTypeError) when a column cannot cast."""
    cols = [t[f.name].cast(f.type) if f.name in t.column_names
            else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


@dataclass
class PartInfo:
    """One attempt's part: its file name, and the compacted file holding it (None: loose)."""

    name: str
    trial_id: str
    attempt: int
    compacted_in: str | None = None


def parse_part_name(name: str) -> PartInfo | None:
    """`<trial_id>-a<attempt>-<rand>.parquet` -> PartInfo; None for other names."""
    if name.startswith((".", COMPACT_PREFIX)) or not name.endswith(".parquet"):
        return None
    stem = name[: -len(".parquet")]
    parts = stem.split("-")
    if len(parts) != 3 or not parts[1].startswith("a") or not parts[1][1:].isdigit():
        return None
    return PartInfo(name, parts[0], int(parts[1][1:]))


class Store:
    """The Parquet datasets of one sweep under a results root."""

    def __init__(self, root: str | ResultsLayout, sweep: str | None = None):
        """``Store(layout)``, or ``Store(root, sweep)`` for `ResultsLayout` (root, sweep)."""
        self.layout = root if isinstance(root, ResultsLayout) else ResultsLayout(root, sweep)
        if sweep is not None and sweep != self.layout.sweep:
            raise ValueError(f"Store: layout of sweep {self.layout.sweep!r}, asked for {sweep!r}")
        self.root, self.sweep = self.layout.root, self.layout.sweep
        self.fs, self.base = self.layout.fs, self.layout.base
        self.dir = self.layout.dir
        self.trials_dir = self.layout.trials
        self.history_dir = self.layout.history
        self._folded_cache: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ listing
    def _list(self, d: str) -> list[str]:
        """File names in d: one listing (one paginated LIST request on an object store)."""
        sel = pafs.FileSelector(d, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def _folded(self, d: str, compacted: list[str]) -> dict[str, str]:
        """{part name: compacted file} for the compacted files of d (their footers only;
        cached, since a compacted file is never rewritten). An unreadable compacted file
        raises: it holds rows whose parts are gone, so skipping it would lose them."""
        out: dict[str, str] = {}
        for c in compacted:
            key = f"{d}/{c}"
            if key not in self._folded_cache:
                try:
                    meta = pq.read_schema(key, filesystem=self.fs).metadata or {}
                    self._folded_cache[key] = json.loads(meta[PARTS_KEY].decode())
                except Exception as ex:
                    raise ConfigError(
                        f"compacted file {key} is unreadable or lacks its part list ({ex}); "
                        "the parts it folded exist only there: restore it from a copy (or move"
                        " it away to read the rest of the sweep without those attempts)") from ex
            out.update(dict.fromkeys(self._folded_cache[key], c))
        return out

    def _layout(self, d: str) -> tuple[list[str], list[str], dict[str, str]]:
        """(loose part names not yet folded, compacted file names, folded part -> file)."""
        names = self._list(d)
        compacted = [n for n in names if n.startswith(COMPACT_PREFIX) and n.endswith(".parquet")]
        folded = self._folded(d, compacted)
        loose = [n for n in names if parse_part_name(n) is not None and n not in folded]
        return loose, compacted, folded

    def parts(self) -> list[PartInfo]:
        """Every attempt's part, loose or folded into a compacted file, by name."""
        loose, _, folded = self._layout(self.trials_dir)
        out = [p for p in map(parse_part_name, loose) if p is not None]
        for name, c in folded.items():
            p = parse_part_name(name)
            if p is not None:
                out.append(PartInfo(p.name, p.trial_id, p.attempt, compacted_in=c))
        return sorted(out, key=lambda p: p.name)

    def attempt_index(self) -> dict[str, int]:
        """{trial_id: highest attempt number used} over trial AND history parts, loose or
        compacted, from one listing per directory. A history part counts because its trial
        part may have been deleted (as `status` advises for a corrupt one): numbering the
        re-run after it keeps the two attempts' history rows apart."""
        best: dict[str, int] = {}
        for d in (self.trials_dir, self.history_dir):
            loose, _, folded = self._layout(d)
            for n in (*loose, *folded):
                p = parse_part_name(n)
                if p is not None and p.attempt > best.get(p.trial_id, 0):
                    best[p.trial_id] = p.attempt
        return best

    def next_attempt(self, trial_id: str) -> int:
        """1 + the highest attempt of trial_id in trial or history parts (loose or compacted).
        Locally a glob on ``<trial_id>-a*.parquet`` (no per-file work for other trials);
        elsewhere one listing per directory. Compacted files' part lists are cached."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return 1 + self.attempt_index().get(trial_id, 0)
        best = 0
        for d in (self.trials_dir, self.history_dir):
            names = [os.path.basename(p) for p in
                     glob.glob(f"{glob.escape(d)}/{glob.escape(trial_id)}-a*.parquet")]
            compacted = sorted(os.path.basename(p) for p in
                               glob.glob(f"{glob.escape(d)}/{COMPACT_PREFIX}*.parquet"))
            names += list(self._folded(d, compacted))
            for n in names:
                p = parse_part_name(n)
                if p is not None and p.trial_id == trial_id:
                    best = max(best, p.attempt)
        return 1 + best

    # ------------------------------------------------------------------ writing
    def _write_atomic(self, table: pa.Table, d: str, name: str, **kw: Any) -> str:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **kw)
        return write_atomic(self.fs, f"{d}/{name}", sink.getvalue().to_pybytes())

    def write_attempt(self, row: Mapping[str, Any],
                      history: list[Mapping[str, Any]] | None = None) -> str:
        """Write one finished attempt (row: TRIAL_SCHEMA columns) and its per-step history
        (dicts with 'step', metric values and optionally `TIME_KEY`, the point's measured time
        in ms since the epoch). History first, so a row never lacks it."""
        rec = _to_record({"sweep": self.sweep, **row})
        if rec["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {rec['status']!r}")
        name = f"{rec['trial_id']}-a{rec['attempt']:03d}-{uuid.uuid4().hex[:8]}.parquet"
        if isinstance(history, pa.Table):  # rows already in HISTORY_SCHEMA (salvaged)
            table = history
        else:
            table = self._history_table(rec["trial_id"], rec["attempt"], history or [])
        self._write_atomic(table, self.history_dir, name)
        return self._write_atomic(pa.Table.from_pylist([rec], schema=TRIAL_SCHEMA),
                                  self.trials_dir, name)

    def _history_table(self, trial_id: str, attempt: int,
                       history: list[Mapping[str, Any]]) -> pa.Table:
        """History points (dicts) as HISTORY_SCHEMA rows: one per (point, metric)."""
        hist_rows: dict[str, list[Any]] = {f.name: [] for f in HISTORY_SCHEMA}
        for h in history:
            step = int(h.get("step", h.get("steps", 0)) or 0)
            t_ms = h.get(TIME_KEY)
            when = None if t_ms is None else dt.datetime.fromtimestamp(int(t_ms) / 1000, dt.UTC)
            for k, v in history_metrics(h).items():
                hist_rows["sweep"].append(self.sweep)
                hist_rows["trial_id"].append(trial_id)
                hist_rows["attempt"].append(int(attempt))
                hist_rows["step"].append(step)
                hist_rows["metric"].append(k)
                hist_rows["value"].append(v)
                hist_rows["measured_at"].append(when)
        return pa.table(hist_rows, schema=HISTORY_SCHEMA)

    # ------------------------------------------------------------------ reading
    def _scan(self, d: str, schema: pa.Schema, one_row: bool
              ) -> tuple[pa.Table, list[tuple[str, str]]]:
        """All rows of directory d (schema + ``part``): compacted files, then every loose part
        not yet folded in ONE dataset scan. Returns (table, [(file name, error)] for files that
        do not parse). ``one_row``: a loose part must hold exactly one row (trial parts)."""
        loose, compacted, _ = self._layout(d)
        out_schema = schema.append(pa.field(PART_COL, pa.string()))
        tables: list[pa.Table] = []
        corrupt: list[tuple[str, str]] = []
        for c in compacted:  # few, large: one read each
            try:
                tables.append(_conform(pq.read_table(f"{d}/{c}", filesystem=self.fs),
                                       out_schema))
            except Exception as ex:
                corrupt.append((c, f"{type(ex).__name__}: {str(ex)[:200]}"))
        if loose:
            try:
                t = self._scan_fast(d, loose, schema)
            except Exception as ex:  # name the culprit(s): rescan in chunks, per file in the
                # chunks that fail (a corrupt part costs one chunk read one by one, not all)
                log.warning("store: one scan over %d parts in %s failed (%s: %s); rescanning "
                            "to name the corrupt part(s)", len(loose), d, type(ex).__name__,
                            str(ex)[:200])
                chunks = []
                for i in range(0, len(loose), 512):
                    try:
                        chunks.append(self._scan_fast(d, loose[i:i + 512], schema))
                    except Exception:
                        c, bad = self._scan_slow(d, loose[i:i + 512], schema)
                        chunks.append(c)
                        corrupt += bad
                t = pa.concat_tables(chunks)
            if one_row:
                counts = pc.value_counts(t[PART_COL])
                n_by_part = dict(zip(counts.field("values").to_pylist(),
                                     counts.field("counts").to_pylist(), strict=True))
                named = {c for c, _ in corrupt}
                wrong = {n for n in loose if n_by_part.get(n, 0) != 1 and n not in named}
                if wrong:
                    corrupt += [(n, f"ValueError: expected 1 row, found {n_by_part.get(n, 0)}")
                                for n in sorted(wrong)]
                    t = t.filter(pc.invert(pc.is_in(t[PART_COL], pa.array(sorted(wrong)))))
            tables.append(t)
        table = pa.concat_tables(tables) if tables else out_schema.empty_table()
        return table, sorted(corrupt)

    def _scan_fast(self, d: str, names: list[str], schema: pa.Schema) -> pa.Table:
        """One multi-threaded pyarrow dataset scan over the listed files; a column missing from
        an older part reads as null (the schema may gain columns)."""
        dset = ds.dataset([f"{d}/{n}" for n in names], schema=schema, format="parquet",
                          filesystem=self.fs)
        t = dset.to_table(columns=[*schema.names, "__filename"])
        part = pa.array([os.path.basename(f) for f in t["__filename"].to_pylist()],
                        pa.string())
        return t.drop_columns(["__filename"]).append_column(PART_COL, part)

    def _scan_slow(self, d: str, names: list[str], schema: pa.Schema
                   ) -> tuple[pa.Table, list[tuple[str, str]]]:
        out_schema = schema.append(pa.field(PART_COL, pa.string()))
        tables, corrupt = [], []
        for n in names:
            try:
                t = _conform(pq.read_table(f"{d}/{n}", filesystem=self.fs), schema)
                tables.append(t.append_column(PART_COL, pa.array([n] * t.num_rows, pa.string())))
            except Exception as ex:
                corrupt.append((n, f"{type(ex).__name__}: {str(ex)[:200]}"))
        return (pa.concat_tables(tables) if tables else out_schema.empty_table()), corrupt

    def read_trials_all(self) -> tuple[pa.Table, list[tuple[str, str]]]:
        """Every attempt row (TRIAL_SCHEMA), and [(file name, error)] for files that do not
        parse (their rows are left out and named, never silently dropped)."""
        t, corrupt = self._scan(self.trials_dir, TRIAL_SCHEMA, one_row=True)
        return t.drop_columns([PART_COL]), corrupt

    def read_history(self) -> tuple[pa.Table, list[tuple[str, str]]]:
        """Every history row (HISTORY_SCHEMA) and the history files that do not parse."""
        t, corrupt = self._scan(self.history_dir, HISTORY_SCHEMA, one_row=False)
        return t.drop_columns([PART_COL]), corrupt

    def read_part(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One attempt's row and its history rows, from its part files or the compacted files
        that folded them. Raises when either cannot be read or is missing (the writer writes
        the history first, so a missing one was lost: it is not an empty history)."""
        row = self._read_one(self.trials_dir, name, TRIAL_SCHEMA)
        if len(row) != 1:
            raise ValueError(f"part {name}: expected 1 row, found {len(row)}")
        return row[0], self._read_one(self.history_dir, name, HISTORY_SCHEMA)

    def _read_one(self, d: str, name: str, schema: pa.Schema) -> list[dict[str, Any]]:
        # the loose file first (one stat, no listing: the mirror calls this once per part)
        if self.fs.get_file_info(f"{d}/{name}").type == pafs.FileType.File:
            return pq.read_table(f"{d}/{name}", filesystem=self.fs).to_pylist()
        _, _, folded = self._layout(d)
        if name not in folded:
            raise FileNotFoundError(f"{d}/{name}")
        t = pq.read_table(f"{d}/{folded[name]}", filesystem=self.fs,
                          filters=[(PART_COL, "==", name)])
        return _conform(t, schema).to_pylist()

    def latest(self) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        """Latest attempt per trial_id as a DataFrame, plus corrupt part files."""
        table, corrupt = self.read_trials_all()
        import duckdb

        con = duckdb.connect()
        con.register("trials_all", table)
        return con.execute(LATEST_SQL).df(), corrupt

    def done_ids(self) -> set[str]:
        df, _ = self.latest()
        return set(df.loc[df["status"].isin(DONE_STATUSES), "trial_id"])

    # ------------------------------------------------------------------ compaction
    def compact(self, held_lock: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Fold every readable loose part (trial rows and their history) into one new
        ``compacted-*.parquet`` per directory, then delete the folded parts. Every attempt row
        is kept (``trials_all`` unchanged, so the latest view, status and resume are too).
        Takes the driver lock for its duration: refuses (ConfigError naming the driver)
        while a live driver runs, and no driver starts meanwhile. Corrupt parts stay where
        they are, for `status` to name. Returns counts and the files written.
        ``held_lock``: the lock of the caller, a driver that owns the sweep (it may compact its
        own parts at the end of a run); it must still be the current lock."""
        if held_lock is not None:
            cur = self.read_lock() or {}
            if cur.get("token") != held_lock.get("token"):
                raise ConfigError(f"sweep '{self.sweep}': compaction needs the driver lock, but "
                                  f"it is held by pid {cur.get('pid')} on {cur.get('host')}")
            lock = None
        else:
            lock, _ = self.acquire_lock()
        try:
            trials, corrupt = self._scan(self.trials_dir, TRIAL_SCHEMA, one_row=True)
            loose_t, _, folded_t = self._layout(self.trials_dir)
            bad = {n for n, _ in corrupt}
            new_t = sorted(n for n in loose_t if n not in bad)
            hist, hcorrupt = self._scan(self.history_dir, HISTORY_SCHEMA, one_row=False)
            loose_h, _, _ = self._layout(self.history_dir)
            hbad = {n for n, _ in hcorrupt}
            # a history part goes with its trial part; an orphan (its trial part deleted or
            # corrupt) stays loose, still counted by next_attempt
            with_trial = set(new_t) | set(folded_t)
            new_h = sorted(n for n in loose_h if n in with_trial and n not in hbad)
            stamp = f"{now_utc():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            name = f"{COMPACT_PREFIX}{stamp}.parquet"
            written = []
            # history first: a trial row is never folded without its history
            for d, table, new in ((self.history_dir, hist, new_h),
                                  (self.trials_dir, trials, new_t)):
                if not new:
                    continue
                rows = table.filter(pc.is_in(table[PART_COL], pa.array(new, pa.string())))
                rows = rows.sort_by([("trial_id", "ascending"), ("attempt", "ascending")]) \
                    if "step" not in rows.schema.names else \
                    rows.sort_by([("trial_id", "ascending"), ("attempt", "ascending"),
                                  ("step", "ascending")])
                meta = {PARTS_KEY: json.dumps(new).encode()}
                written.append(self._write_atomic(
                    rows.replace_schema_metadata(meta), d, name, row_group_size=16384))
            # only now delete the folded parts
            deleted = self._delete_folded()
            return {"attempts": len(new_t), "history_parts": len(new_h),
                    "deleted": deleted, "written": written,
                    "corrupt": sorted(corrupt) + sorted(hcorrupt)}
        finally:
            if lock is not None:
                self.release_lock(lock)

    def _delete_folded(self) -> int:
        """Delete every loose part listed in a compacted file (also those of an earlier
        compaction that crashed before deleting them); returns how many."""
        deleted = 0
        for d in (self.history_dir, self.trials_dir):
            names = self._list(d)
            present = set(names)
            for n in self._folded(d, [c for c in names if c.startswith(COMPACT_PREFIX)]):
                if n in present:
                    self.fs.delete_file(f"{d}/{n}")
                    deleted += 1
        return deleted

    # ------------------------------------------------------------------ in-flight attempts
    # An attempt writes running/<trial_id>.json when it starts (host, pid, attempt, times) and
    # deletes it after its part; the driver deletes them all when it starts and ends (it holds
    # the lock: no attempt of the sweep runs then). So a marker counts as running only while
    # the driver lock is live and the trial has no row of that attempt (`running_trials`).
    @property
    def running_dir(self) -> str:
        return self.layout.running

    def mark_running(self, trial_id: str, attempt: int, info: Mapping[str, Any]) -> None:
        """Record (atomically) that ``attempt`` of ``trial_id`` runs now; called again to
        refresh ``heartbeat`` (seconds since the epoch)."""
        rec = {"trial_id": trial_id, "attempt": int(attempt), "host": socket.gethostname(),
               "pid": os.getpid(), "heartbeat": time.time(), **info}
        write_atomic(self.fs, f"{self.running_dir}/{trial_id}.json",
                     json.dumps(rec, default=str).encode())

    def clear_running(self, trial_id: str | None = None) -> int:
        """Delete the in-flight marker of ``trial_id`` (None: every marker); returns how many."""
        names = ([f"{trial_id}.json"] if trial_id is not None else
                 [n for n in self._list(self.running_dir) if n.endswith(".json")])
        n = 0
        for name in names:
            try:
                self.fs.delete_file(f"{self.running_dir}/{name}")
                n += 1
            except FileNotFoundError:
                pass
        return n

    # In-flight history: each point an attempt reports is written here (one small Parquet file,
    # HISTORY_SCHEMA) before it goes to the driver and MLflow's live view, and the files are
    # deleted once the attempt's part holds them. So MLflow never holds a point the results
    # root lacks: an attempt that dies without its part is salvaged from these files
    # (`salvage_dead_attempts`).
    @property
    def inflight_dir(self) -> str:
        return self.layout.inflight

    def write_inflight(self, trial_id: str, attempt: int, seq: int,
                       point: Mapping[str, Any]) -> None:
        """Make one history point of a running attempt durable (``seq``: its index)."""
        self._write_atomic(self._history_table(trial_id, attempt, [point]), self.inflight_dir,
                           f"{trial_id}-a{int(attempt):03d}-{int(seq):07d}.parquet")

    def _inflight_names(self, trial_id: str, attempt: int) -> list[str]:
        head = f"{trial_id}-a{int(attempt):03d}-"
        return [n for n in self._list(self.inflight_dir) if n.startswith(head)]

    def clear_inflight(self, trial_id: str, attempt: int) -> None:
        """Delete an attempt's in-flight points (after its part holds them)."""
        for n in self._inflight_names(trial_id, attempt):
            try:
                self.fs.delete_file(f"{self.inflight_dir}/{n}")
            except FileNotFoundError:
                pass

    def salvage_dead_attempts(self, trial_id: str | None = None, *,
                              cause: str | None = None) -> list[str]:
        """Give every attempt that died without writing its part (an in-flight marker without
        a part of that attempt: its process was killed, its node lost) a ``failed`` row whose
        history is its in-flight points, then remove the marker and the points. Call only when
        no attempt of the trial (None: of the sweep) can be running: the driver at start and
        end, a new attempt before it numbers itself. Returns one line per salvaged attempt.

        So the attempt is on record, the next attempt gets a new number (its points never
        join the dead one's), and MLflow's live run of the dead attempt is completed from the
        part like any other."""
        if trial_id is None:
            markers = self.running_markers()
            damaged = [n[: -len(".json")] for n, _ in self._damaged_markers()]
            done = self.attempt_index() if markers or damaged else {}
        else:  # one trial (every attempt start): its own marker only, one read
            m = self._read_marker(f"{trial_id}.json")
            markers = {trial_id: m} if m is not None else {}
            damaged = ([trial_id] if m is None and self._marker_state(f"{trial_id}.json")[1]
                       else [])
            done = ({trial_id: self.next_attempt(trial_id) - 1} if markers or damaged else {})
        notes = []
        for tid in damaged:  # a marker cut short: its attempt is the newest in-flight one
            # in-flight names are <trial_id>-a<attempt>-<seq>.parquet, like a part's
            atts = [p.attempt for n in self._list(self.inflight_dir)
                    if (p := parse_part_name(n)) is not None and p.trial_id == tid]
            if atts and max(atts) > int(done.get(tid, 0)):
                markers[tid] = {**self._manifest_fields(tid), "trial_id": tid,
                                "attempt": max(atts), "note": "its in-flight marker was damaged"}
            else:
                self.clear_running(tid)
                notes.append(f"trial {tid}: removed a damaged in-flight marker (no attempt of "
                             "it left points to keep)")
                log.warning(notes[-1])
        for tid, m in markers.items():
            att = int(m.get("attempt", 0))
            if att > int(done.get(tid, 0)):
                hist, bad = self._read_inflight(tid, att)
                steps = hist["step"].to_pylist()
                how = cause or "its process was killed or its node lost"
                why = (f"attempt {att} died without writing its result ({how}, on host "
                       f"{m.get('host')} pid {m.get('pid')}); "
                       f"{len(set(steps))} history point(s) up to step "
                       f"{max(steps) if steps else '-'} were kept")
                if bad:
                    why += (f", {len(bad)} damaged in-flight file(s) left out "
                            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
                if m.get("note"):
                    why += f"; {m['note']}"
                started = m.get("started_at")
                self.write_attempt({
                    **{k: m.get(k) for k in ("preset", "kind", "arch", "inference", "transform",
                                             "seed", "config_json", "code_version")},
                    "trial_id": tid, "attempt": att, "status": Status.FAILED, "error": why,
                    "host": m.get("host"), "started_at": dt.datetime.fromisoformat(started)
                    if isinstance(started, str) else None, "finished_at": now_utc()}, hist)
                notes.append(f"trial {tid}: {why}")
                log.warning("trial %s: %s", tid, why)
            self.clear_inflight(tid, att)
            self.clear_running(tid)
        return notes

    def _manifest_fields(self, trial_id: str) -> dict[str, Any]:
        """A trial's row fields from the manifest (for a failed row whose marker is lost)."""
        try:
            m = self.read_manifest() or {}
        except ConfigError:
            return {}
        t = next((t for t in m.get("trials", []) if t.get("trial_id") == trial_id), None)
        if not t:
            return {}
        cfg = t.get("config") or {}
        return {"preset": m.get("preset"), "kind": t.get("kind"),
                "config_json": json.dumps(cfg, sort_keys=True, default=str),
                **{k: cfg.get(k) for k in ("arch", "inference", "transform", "seed")}}

    def _read_inflight(self, trial_id: str, attempt: int) -> tuple[pa.Table, list[str]]:
        """(the attempt's in-flight points as HISTORY_SCHEMA rows, names of the files among
        them that do not parse: zero-length or cut short by a crash, left out)."""
        tables, bad = [], []
        for n in self._inflight_names(trial_id, attempt):
            try:
                tables.append(_conform(pq.read_table(f"{self.inflight_dir}/{n}",
                                                     filesystem=self.fs), HISTORY_SCHEMA))
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as ex:
                bad.append(n)
                log.warning("in-flight point %s/%s does not parse (%s): left out",
                            self.inflight_dir, n, ex)
        return (pa.concat_tables(tables) if tables else HISTORY_SCHEMA.empty_table()), bad

    def damaged_inflight(self) -> list[tuple[str, str]]:
        """[(path, why)] of in-flight markers and points that do not parse (zero-length or cut
        short): named by `symsweep status`; `salvage_dead_attempts` leaves them out and
        removes them."""
        out = [(f"{self.running_dir}/{n}", why) for n, why in self._damaged_markers()]
        for n in self._list(self.inflight_dir):
            if not n.endswith(".parquet") or n.startswith("."):
                continue
            path = f"{self.inflight_dir}/{n}"
            try:
                pq.read_metadata(path, filesystem=self.fs)
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as ex:
                out.append((path, "zero-length" if "size is 0" in str(ex) or
                            "empty" in str(ex).lower() else
                            f"{type(ex).__name__}: {str(ex)[:120]}"))
        return out

    def _damaged_markers(self) -> list[tuple[str, str]]:
        """[(marker file name, why)] of the in-flight markers that do not parse."""
        return [(n, why) for n in self._list(self.running_dir) if n.endswith(".json")
                and (why := self._marker_state(n)[1]) is not None]

    def _marker_state(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """(marker ``name``'s record, None) when it parses; (None, why) when it exists but is
        zero-length or cut short; (None, None) when it is gone."""
        try:
            with self.fs.open_input_stream(f"{self.running_dir}/{name}") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None
        try:
            rec = json.loads(raw.decode())
            str(rec["trial_id"])
            return rec, None
        except (ValueError, KeyError, TypeError) as ex:
            return None, ("zero-length" if not raw.strip() else
                          f"cut short or not a marker ({type(ex).__name__})")

    def running_markers(self) -> dict[str, dict[str, Any]]:
        """{trial_id: marker} of every readable in-flight marker (an unreadable one, e.g. read
        while being replaced, is left out with a warning: it only feeds a count)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._list(self.running_dir):
            if name.endswith(".json") and (rec := self._read_marker(name)) is not None:
                out[str(rec["trial_id"])] = rec
        return out

    def _read_marker(self, name: str) -> dict[str, Any] | None:
        try:
            rec, why = self._marker_state(name)
        except OSError as ex:
            rec, why = None, str(ex)
        if why is not None:
            log.warning("in-flight marker %s/%s unreadable (%s); not counted", self.running_dir,
                        name, why)
        return rec

    def running_trials(self, latest_attempt: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """The trials with an attempt in flight: a marker newer than every row of the trial
        (``latest_attempt``: trial_id -> highest attempt with a row) while a live driver holds
        the sweep's lock. Empty without a live driver (its markers are leftovers)."""
        try:
            lock = self.read_lock()
        except OSError as ex:  # not "no driver": a live one may hold it
            raise ConfigError(f"cannot read the driver lock {self.lock_path} ({type(ex).__name__}"
                              f": {ex}), so whether a driver runs sweep '{self.sweep}' is "
                              f"unknown; check access to {self.root}") from None
        if not lock or not lock_is_live(lock):
            return {}
        return {tid: m for tid, m in self.running_markers().items()
                if int(m.get("attempt", 0)) > int(latest_attempt.get(tid, 0))}

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        write_atomic(self.fs, self.manifest_path,
                     json.dumps(manifest, indent=1, default=str).encode())

    @property
    def manifest_path(self) -> str:
        return self.layout.manifest

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest (what the last `run` expanded), None when this sweep has none.

        Raises `ManifestDamagedError` (one line, naming the file) when ``sweep.json`` exists
        but is zero-length, cut short or not a manifest: never taken for "no trials"."""
        try:
            with self.fs.open_input_stream(self.manifest_path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as ex:
            raise ManifestDamagedError(self, f"unreadable: {ex}") from None
        if not raw.strip():
            raise ManifestDamagedError(self, "zero-length")
        try:
            m = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as ex:
            raise ManifestDamagedError(self, f"cut short or not JSON: {ex}") from None
        if not isinstance(m, dict):
            raise ManifestDamagedError(self, "not a symsweep manifest (not a JSON object)")
        return m

    def manifest_or_fail(self, root_option: str = "--results") -> dict[str, Any]:
        """The manifest; ConfigError (one line) when this sweep was never run here, naming
        ``root_option`` as the fix (the CLI's ``--results``, the Python API's ``root=``)."""
        m = self.read_manifest()
        if m is None:
            raise ConfigError(f"no sweep '{self.sweep}' under {self.root}; run it first or pass "
                              f"{root_option}")
        return m

    def load_finished(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """(latest attempt per trial, manifest) for tables and figures: the one result loader.
        A trial whose latest attempt was interrupted (a stop request) has no result yet and is
        left out (it is neither finished nor failed; resume continues it). Corrupt part files
        are named on stderr (`warn_corrupt`); ConfigError when the sweep is absent or has no
        finished trial yet."""
        m = self.manifest_or_fail()
        df, corrupt = self.latest()
        warn_corrupt(corrupt)
        df = df[df["status"] != Status.INTERRUPTED].reset_index(drop=True)
        if df.empty:
            raise ConfigError(f"sweep '{self.sweep}' has no finished trials under {self.root} "
                              "yet")
        return df, m

    # ------------------------------------------------------------------ driver lock
    # (orchestrator.driver_lock: one driver per sweep; these delegate to it)
    @property
    def driver_lock(self) -> DriverLock:
        return DriverLock(self.layout)

    @property
    def lock_path(self) -> str:
        return self.driver_lock.path

    def read_lock(self) -> dict[str, Any] | None:
        """The driver lock's record; None when there is none or it does not parse (an I/O
        error is raised, `DriverLock.read`)."""
        return self.driver_lock.read()

    def acquire_lock(self, *, stale_after_s: float = STALE_AFTER_S,
                     settle_s: float = 2.0) -> tuple[dict[str, Any], str | None]:
        """`DriverLock.acquire` for this sweep."""
        return self.driver_lock.acquire(stale_after_s=stale_after_s, settle_s=settle_s)

    def heartbeat(self, lock: dict[str, Any]) -> None:
        self.driver_lock.heartbeat(lock)

    def release_lock(self, lock: dict[str, Any]) -> None:
        self.driver_lock.release(lock)


class ManifestDamagedError(ConfigError):
    """``sweep.json`` exists but cannot be read as a manifest (``why``: zero-length, cut
    short by a crash, not JSON). `orchestrator.repair.rebuild_manifest` rebuilds it from the
    sweep file when that is unambiguous, or names the command that does."""

    def __init__(self, store: Store, why: str):
        self.path, self.why, self.sweep = store.manifest_path, why, store.sweep
        super().__init__(f"the manifest {self.path} of sweep '{store.sweep}' is damaged "
                         f"({why}); `symsweep status {store.sweep}` rebuilds it or names the "
                         "command that does")


def warn_corrupt(corrupt: list[tuple[str, str]]) -> None:
    """Name each part file that does not parse on stderr: skipped, never silently dropped."""
    for name, err in corrupt:
        print(f"symsweep: warning: corrupt part file {name} skipped ({err})", file=sys.stderr)


def list_sweeps(root: str) -> list[str]:
    """The sweeps under ``root``: folders with a manifest (``sweep.json``, written before the
    first trial starts, so a sweep interrupted before its first part is listed) or a
    ``trials/`` folder."""
    here = ResultsLayout(root)
    fs = here.fs
    infos = fs.get_file_info(pafs.FileSelector(here.base, allow_not_found=True))
    out = []
    for i in infos:
        if i.type == pafs.FileType.Directory:
            sweep = here.sweep_named(i.base_name)
            marks = fs.get_file_info([sweep.trials, sweep.manifest])
            if marks[0].type == pafs.FileType.Directory or marks[1].type == pafs.FileType.File:
                out.append(i.base_name)
    return sorted(out)


def connect(root: str, sweeps: list[str] | None = None):
    """A DuckDB connection with ``trials_all``, ``trials`` (latest attempt per trial) and
    ``history`` over the given sweeps (default: every sweep under root). Returns
    (connection, corrupt part files as [(sweep/name, error)])."""
    import duckdb

    names = sweeps if sweeps is not None else list_sweeps(root)
    trials, hist, corrupt = [], [], []
    for s in names:
        st = Store(root, s)
        t, c = st.read_trials_all()
        h, ch = st.read_history()
        trials.append(t)
        hist.append(h)
        corrupt += [(f"{s}/trials/{n}", e) for n, e in c]
        corrupt += [(f"{s}/history/{n}", e) for n, e in ch]
    con = duckdb.connect()
    con.register("trials_all",
                 pa.concat_tables(trials) if trials else TRIAL_SCHEMA.empty_table())
    con.register("history", pa.concat_tables(hist) if hist else HISTORY_SCHEMA.empty_table())
    con.execute(f"create view trials as {LATEST_SQL}")
    return con, corrupt
