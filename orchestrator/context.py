"""What one run of a sweep knows, typed: the `RunContext` every attempt of it receives.

`runner.run_sweep` builds it once, after it holds the sweep's driver lock; Ray Tune carries it
to every trial (``tune.with_parameters``: one copy in the object store, not in each trial's
config); `trial.execute_trial` and `trial.materialize_derived` read it. It is frozen, so no
component can change what another one sees, and picklable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from orchestrator.layout import ResultsLayout


@dataclass(frozen=True)
class RunContext:
    """One invocation of `symsweep run` / `resume` (or a test's in-process run).

    sweep, preset: the sweep's name and the preset run (sweeps/common.py).
    results: the results root, absolute on the driver's host or a URI (s3://, gs://).
    code_version: `runner.code_version()` of the driver, recorded in every row.
    tiles: whether kernel cells use the root's tile cache (`ResultsLayout.tiles`).
    data_dir, cache_dir: --data-dir / --cache-dir (absolute, or a URI), else None; a worker
        config gets them when set (they override the preset's).
    driver_token: the token of the driver lock this run holds; trials poll the stop request
        naming it (stopping.StopProbe). None outside a driver (no stop can reach it).
    fault: fault injection for tests, ``{"crash_at_step": N, "trials": [ids] or None}``.
    only: the --only selection ({config key: [values]}), overrides: the --set values,
    mlflow_uri, address: as given on the command line (None: the defaults).
    """

    sweep: str
    preset: str
    results: str
    code_version: str | None = None
    tiles: bool = True
    data_dir: str | None = None
    cache_dir: str | None = None
    driver_token: str | None = None
    fault: Mapping[str, Any] | None = None
    only: Mapping[str, list[str]] | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    mlflow_uri: str | None = None
    address: str | None = None

    @cached_property
    def layout(self) -> ResultsLayout:
        """Every path of this sweep under the results root."""
        return ResultsLayout(self.results, self.sweep)

    def worker_paths(self) -> dict[str, str]:
        """The --data-dir / --cache-dir a worker config takes over its preset's (set ones)."""
        return {k: v for k, v in (("data_dir", self.data_dir), ("cache_dir", self.cache_dir))
                if v}
