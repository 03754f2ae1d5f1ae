"""Where everything lives under a results root: the one place that names a path.

A results root is a local folder or an object-store URI (s3://bucket/x, gs://bucket/x); every
path below is on its file system (`fsio.resolve_root`), joined with "/"::

    <root>/tiles/<key>.npz                              kernel tiles, shared by every sweep
    <root>/tiles/<key>.claim                            who computes a tile now (tile_claims.py)
    <root>/mlflow.db, mlartifacts/                      default MLflow store, local roots only
    <root>/<sweep>/sweep.json                           manifest: what the last run expanded
    <root>/<sweep>/driver.lock                          one driver per sweep (driver_lock.py)
    <root>/<sweep>/stop_requested.json                  `symsweep stop` (stopping.py)
    <root>/<sweep>/trials/<trial_id>-a<n>-<rand>.parquet   one row per attempt (store.py)
    <root>/<sweep>/history/<trial_id>-a<n>-<rand>.parquet  per-step metrics of an attempt
    <root>/<sweep>/running/<trial_id>.json              attempts in flight
    <root>/<sweep>/inflight/<trial_id>-a<n>-<seq>.parquet  history points not yet in a part
    <root>/<sweep>/predictions/<trial_id>-a<n>.npy      test predictions (N_test, K) float32
    <root>/<sweep>/logs/<trial_id>-a<n>.log             an attempt's log (attempt_log.py)
    <root>/<sweep>/checkpoints/<trial_id>/<step>-<nonce>/  trial-keyed checkpoints
    <root>/<sweep>/_tune/                               Ray Tune's scratch state
    <root>/<sweep>/<sweep>.png, curves/<trial_id>.png   figures (beside them: .pdf, .svg)

In the spirit of Ray Tune's ``StorageContext``: components take a `ResultsLayout` and ask it
for their paths instead of joining strings of their own, so the layout is stated once (README
"Where results land" and docs/results.md describe the same tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pyarrow.fs as pafs

from orchestrator.fsio import resolve_root

MANIFEST = "sweep.json"
DRIVER_LOCK = "driver.lock"
STOP_REQUEST = "stop_requested.json"


@dataclass(frozen=True)
class ResultsLayout:
    """The paths of sweep ``sweep`` under results root ``root`` (``sweep=None``: the root's own
    paths only, e.g. the tile cache; a sweep's path then raises ValueError).

    ``root``: a local path (relative ones are made absolute on this host) or a URI. Figure
    paths keep ``root`` as given (a relative root prints as the user typed it); every other
    path is on `fs`. Picklable (a trial carries its run context's layout to a Ray worker).
    Raises ConfigError (one line) when pyarrow cannot open a URI, on first use of `fs`."""

    root: str
    sweep: str | None = None

    @cached_property
    def _resolved(self) -> tuple[pafs.FileSystem, str]:
        return resolve_root(self.root)

    @property
    def fs(self) -> pafs.FileSystem:
        """The file system of the root (local, S3, GCS)."""
        return self._resolved[0]

    @property
    def base(self) -> str:
        """The root on `fs`: an absolute local path, or bucket/prefix."""
        return self._resolved[1]

    # ---------------------------------------------------------------- shared by every sweep
    @property
    def tiles(self) -> str:
        return f"{self.base}/tiles"

    @property
    def mlflow_db(self) -> str:
        return f"{self.base}/mlflow.db"

    @property
    def mlflow_artifacts(self) -> str:
        return f"{self.base}/mlartifacts"

    # ---------------------------------------------------------------- one sweep's folder
    @property
    def dir(self) -> str:
        if not self.sweep:
            raise ValueError(f"ResultsLayout({self.root!r}) names no sweep: its folder is unknown")
        return f"{self.base}/{self.sweep}"

    @property
    def manifest(self) -> str:
        return f"{self.dir}/{MANIFEST}"

    @property
    def driver_lock(self) -> str:
        return f"{self.dir}/{DRIVER_LOCK}"

    @property
    def stop_request(self) -> str:
        return f"{self.dir}/{STOP_REQUEST}"

    @property
    def trials(self) -> str:
        return f"{self.dir}/trials"

    @property
    def history(self) -> str:
        return f"{self.dir}/history"

    @property
    def running(self) -> str:
        return f"{self.dir}/running"

    @property
    def inflight(self) -> str:
        return f"{self.dir}/inflight"

    @property
    def tune(self) -> str:
        return f"{self.dir}/_tune"

    @property
    def tune_storage(self) -> str:
        """`tune` as Ray Tune's ``storage_path`` takes it: a local path, or the root's URI."""
        if "://" not in self.root:
            return self.tune
        self.dir  # noqa: B018 - raises without a sweep
        return f"{self.root.rstrip('/')}/{self.sweep}/_tune"

    def checkpoints(self, trial_id: str) -> str:
        return f"{self.dir}/checkpoints/{trial_id}"

    def predictions(self, trial_id: str, attempt: int) -> str:
        return f"{self.dir}/predictions/{trial_id}-a{attempt}.npy"

    def log(self, trial_id: str, attempt: int) -> str:
        return f"{self.dir}/logs/{trial_id}-a{attempt}.log"

    def figure(self) -> str:
        """The sweep's figure (PNG; the PDF and SVG go beside it), under ``root`` as given."""
        self.dir  # noqa: B018 - raises without a sweep
        return f"{self.root.rstrip('/')}/{self.sweep}/{self.sweep}.png"

    def curves(self, trial_id: str) -> str:
        """One trial's training curves (PNG), under ``root`` as given."""
        self.dir  # noqa: B018 - raises without a sweep
        return f"{self.root.rstrip('/')}/{self.sweep}/curves/{trial_id}.png"

    def sweep_named(self, sweep: str) -> ResultsLayout:
        """The layout of another sweep under the same root (same file system)."""
        out = ResultsLayout(self.root, sweep)
        if "_resolved" in self.__dict__:  # one resolution per root
            out.__dict__["_resolved"] = self._resolved
        return out
