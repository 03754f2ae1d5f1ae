"""Results store: Parquet part files per trial attempt, a per-step history, DuckDB queries.

Layout under the results root (a local directory or any URI pyarrow understands):

    <root>/<sweep>/trials/<trial_id>-a<attempt>-<rand>.parquet   one row per finished attempt
    <root>/<sweep>/history/<same name>.parquet                   long format: step, metric, value
    <root>/<sweep>/sweep.json                                    what the last `run` expanded
    <root>/<sweep>/driver.lock                                   the live driver (host, pid, ...)

Every part file is written to a hidden temporary name and then renamed, so a reader never sees
half a file and two writers never share one. Readers skip hidden names; a part file that
exists but does not parse is reported as corrupt (never silently read or dropped).
The DuckDB view ``trials`` keeps the latest attempt per (sweep, trial_id); ``trials_all`` has
every attempt and ``history`` the per-step metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.errors import ConfigError

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
    ("wall_s", pa.float64()),
    ("error", pa.string()),
    ("derived_from", pa.string()),
    ("started_at", TS),
    ("finished_at", TS),
    ("code_version", pa.string()),
    ("node", pa.string()),
    ("host", pa.string()),
    ("config_json", pa.string()),
    ("metrics_json", pa.string()),
])
HISTORY_SCHEMA = pa.schema([
    ("sweep", pa.string()),
    ("trial_id", pa.string()),
    ("attempt", pa.int64()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])
STATUSES = ("completed", "diverged", "failed")
DONE_STATUSES = ("completed", "diverged")  # a finished result; resume does not redo these
LATEST_SQL = (
    "select * exclude (_rn) from (select *, row_number() over (partition by sweep, trial_id "
    "order by attempt desc, finished_at desc) as _rn from trials_all) where _rn = 1"
)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a results root: a local path (made absolute) or a URI."""
    if "://" in root:
        try:
            return pafs.FileSystem.from_uri(root)
        except Exception as ex:
            raise ConfigError(f"--results {root!r}: pyarrow cannot open it ({ex}); use a "
                              "local directory or an s3:// / gs:// URI") from ex
    path = os.path.abspath(os.path.expanduser(root))
    return pafs.LocalFileSystem(), path


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


@dataclass
class PartInfo:
    name: str
    trial_id: str
    attempt: int


def parse_part_name(name: str) -> PartInfo | None:
    """`<trial_id>-a<attempt>-<rand>.parquet` -> PartInfo; None for other names."""
    if name.startswith(".") or not name.endswith(".parquet"):
        return None
    stem = name[: -len(".parquet")]
    parts = stem.split("-")
    if len(parts) != 3 or not parts[1].startswith("a") or not parts[1][1:].isdigit():
        return None
    return PartInfo(name, parts[0], int(parts[1][1:]))


class Store:
    """The Parquet datasets of one sweep under a results root."""

    def __init__(self, root: str, sweep: str):
        self.root = root
        self.sweep = sweep
        self.fs, self.base = resolve_root(root)
        self.dir = f"{self.base}/{sweep}"
        self.trials_dir = f"{self.dir}/trials"
        self.history_dir = f"{self.dir}/history"

    # ------------------------------------------------------------------ listing
    def _list(self, d: str) -> list[str]:
        sel = pafs.FileSelector(d, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def parts(self) -> list[PartInfo]:
        return [p for p in map(parse_part_name, self._list(self.trials_dir)) if p is not None]

    def next_attempt(self, trial_id: str) -> int:
        return 1 + max((p.attempt for p in self.parts() if p.trial_id == trial_id), default=0)

    # ------------------------------------------------------------------ writing
    def _write_atomic(self, table: pa.Table, d: str, name: str) -> str:
        self.fs.create_dir(d, recursive=True)
        tmp = f"{d}/.{name}.{uuid.uuid4().hex[:6]}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, f"{d}/{name}")
        return f"{d}/{name}"

    def write_attempt(self, row: Mapping[str, Any],
                      history: list[Mapping[str, Any]] | None = None) -> str:
        """Write one finished attempt (row: TRIAL_SCHEMA columns) and its per-step history
        (dicts with 'step' and metric values). History first, so a row never lacks it."""
        rec = _to_record({"sweep": self.sweep, **row})
        if rec["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {rec['status']!r}")
        name = f"{rec['trial_id']}-a{rec['attempt']:03d}-{uuid.uuid4().hex[:8]}.parquet"
        hist_rows: dict[str, list[Any]] = {f.name: [] for f in HISTORY_SCHEMA}
        for h in history or []:
            step = int(h.get("step", h.get("steps", 0)) or 0)
            for k, v in h.items():
                if k in ("step", "steps") or isinstance(v, bool):
                    continue
                if isinstance(v, int | float):
                    hist_rows["sweep"].append(self.sweep)
                    hist_rows["trial_id"].append(rec["trial_id"])
                    hist_rows["attempt"].append(rec["attempt"])
                    hist_rows["step"].append(step)
                    hist_rows["metric"].append(k)
                    hist_rows["value"].append(float(v))
        self._write_atomic(pa.table(hist_rows, schema=HISTORY_SCHEMA), self.history_dir, name)
        return self._write_atomic(pa.Table.from_pylist([rec], schema=TRIAL_SCHEMA),
                                  self.trials_dir, name)

    # ------------------------------------------------------------------ reading
    def read_trials_all(self) -> tuple[pa.Table, list[tuple[str, str]]]:
        """Every attempt row, and [(part name, error)] for part files that do not parse."""
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

    def read_history(self) -> tuple[pa.Table, list[tuple[str, str]]]:
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

    def read_part(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One attempt's row and its history rows."""
        row = pq.read_table(f"{self.trials_dir}/{name}", filesystem=self.fs).to_pylist()[0]
        try:
            hist = pq.read_table(f"{self.history_dir}/{name}", filesystem=self.fs).to_pylist()
        except Exception:
            hist = []
        return row, hist

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

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.fs.create_dir(self.dir, recursive=True)
        tmp = f"{self.dir}/.sweep.json.{uuid.uuid4().hex[:6]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(manifest, indent=1, default=str).encode())
        self.fs.move(tmp, f"{self.dir}/sweep.json")

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(f"{self.dir}/sweep.json") as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError):
            return None

    # ------------------------------------------------------------------ driver lock
    @property
    def lock_path(self) -> str:
        return f"{self.dir}/driver.lock"

    def read_lock(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.lock_path) as f:
                return json.loads(f.read().decode() or "{}")
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def acquire_lock(self, *, stale_after_s: float = 600.0) -> tuple[dict[str, Any], str | None]:
        """Take the driver lock of this sweep. Returns (our lock, note about a stale lock taken
        over or None). Raises ConfigError naming the live driver when one holds it."""
        self.fs.create_dir(self.dir, recursive=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": now_utc().isoformat(timespec="seconds"),
              "heartbeat": now_utc().timestamp(), "token": uuid.uuid4().hex}
        note = None
        old = self.read_lock()
        if old is not None:
            if _lock_is_live(old, stale_after_s):
                raise ConfigError(
                    f"sweep '{self.sweep}' is already running under {self.root}: driver pid "
                    f"{old.get('pid')} on host {old.get('host')}, started {old.get('started_at')}"
                    "; wait for it, or stop it and run `symsweep resume`")
            note = (f"took over a stale lock of a dead driver (pid {old.get('pid')} on "
                    f"{old.get('host')}, started {old.get('started_at')})")
            self.fs.delete_file(self.lock_path)
        if isinstance(self.fs, pafs.LocalFileSystem):
            try:  # O_EXCL: of two drivers racing here, exactly one wins
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError as ex:
                cur = self.read_lock() or {}
                raise ConfigError(
                    f"sweep '{self.sweep}' is already running: driver pid {cur.get('pid')} on "
                    f"host {cur.get('host')}, started {cur.get('started_at')}") from ex
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        else:
            with self.fs.open_output_stream(self.lock_path) as f:
                f.write(json.dumps(me).encode())
        return me, note

    def heartbeat(self, lock: dict[str, Any]) -> None:
        cur = self.read_lock()
        if cur is None or cur.get("token") != lock["token"]:
            return
        lock["heartbeat"] = now_utc().timestamp()
        tmp = f"{self.dir}/.driver.lock.{uuid.uuid4().hex[:6]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(lock).encode())
        self.fs.move(tmp, self.lock_path)

    def release_lock(self, lock: dict[str, Any]) -> None:
        cur = self.read_lock()
        if cur is not None and cur.get("token") == lock["token"]:
            self.fs.delete_file(self.lock_path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _lock_is_live(lock: Mapping[str, Any], stale_after_s: float) -> bool:
    """Same host: the pid decides. Other host: a heartbeat newer than stale_after_s."""
    if lock.get("host") == socket.gethostname():
        return _pid_alive(int(lock.get("pid", -1)))
    hb = float(lock.get("heartbeat", 0))
    return now_utc().timestamp() - hb < stale_after_s


def list_sweeps(root: str) -> list[str]:
    fs, base = resolve_root(root)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    out = []
    for i in infos:
        if i.type == pafs.FileType.Directory:
            t = fs.get_file_info(f"{base}/{i.base_name}/trials")
            if t.type == pafs.FileType.Directory:
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
