"""The results of a sweep from Python (a notebook, a script), without the CLI:

    from orchestrator.results import load
    df = load("fig2")                                   # latest attempt per trial
    df = load("fig2", view="trials_all")                # every attempt (retries, resumes)
    hist = load("fig2", view="history")                 # per-step metrics, long format
    con = connect("fig2")                               # DuckDB: trials, trials_all, history
    con.sql("select arch, transform, avg(best_test_acc) from trials group by all").df()

``root`` is the results root (a directory or an s3:// / gs:// URI); default ``$SYMSWEEP_RESULTS``,
else ``results``, as for the CLI. Columns: the results schema (`orchestrator.store.TRIAL_SCHEMA`,
`HISTORY_SCHEMA`; README "Where results land"). Part files that do not parse are named on stderr
and skipped, never silently dropped.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from orchestrator.store import Store, list_sweeps, warn_corrupt
from orchestrator.store import connect as _connect_store
from workers.errors import ConfigError

VIEWS = ("trials", "trials_all", "history")
MIN_PREFIX = 4  # shorter trial-id prefixes match too much to be meant (git's rule too)


class NoSuchTrial(ConfigError):
    """No trial (or no unique trial) with that id under the results root."""


def default_root() -> str:
    """``$SYMSWEEP_RESULTS`` if set, else ``results`` (the CLI's default)."""
    return os.environ.get("SYMSWEEP_RESULTS") or "results"


def connect(sweep: str | list[str] | None = None, root: str | None = None) -> Any:
    """A DuckDB connection with the views ``trials`` (latest attempt per trial), ``trials_all``
    and ``history`` over ``sweep`` (a name, a list, or None for every sweep under ``root``).

    Raises ConfigError when ``root`` is not a directory or a named sweep was never run
    under it (the message names ``root=``, the fix from Python)."""
    import pyarrow.fs as pafs

    from orchestrator.fsio import resolve_root

    root = root or default_root()
    fs, base = resolve_root(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise ConfigError(f"root={root!r}: no such results folder; pass root= the folder "
                          "`symsweep run` wrote (or set SYMSWEEP_RESULTS)")
    names = [sweep] if isinstance(sweep, str) else sweep
    for name in names or []:
        Store(root, name).manifest_or_fail(root_option="root=")
    con, corrupt = _connect_store(root, names)
    warn_corrupt(corrupt)
    return con


def load(sweep: str, root: str | None = None, view: str = "trials") -> pd.DataFrame:
    """One view of one sweep as a pandas DataFrame: ``trials`` (one row per trial, its latest
    attempt), ``trials_all`` (one row per attempt) or ``history`` (step, metric, value per
    attempt). Raises ConfigError for an unknown view or a sweep never run under ``root``."""
    if view not in VIEWS:
        raise ConfigError(f"view {view!r}: choose one of {', '.join(VIEWS)}")
    return connect(sweep, root).execute(f"select * from {view}").df()


def resolve_trial(prefix: str, root: str | None = None, sweep: str | None = None
                  ) -> tuple[str, str]:
    """(sweep, trial_id) of the one trial whose id starts with ``prefix`` (like git's short
    hashes: at least `MIN_PREFIX` characters), among the trials of the sweeps' manifests (so a
    trial not run yet is found too) and their stored rows; in ``sweep`` or in every sweep
    under ``root``. The one resolver behind `symsweep show` and `symsweep plot TRIAL_ID`.

    Raises `NoSuchTrial` (a ConfigError: one line, exit 2) when none or several match, and
    ConfigError when ``sweep`` was never run under ``root``."""
    root = root or default_root()
    p = prefix.strip().lower()
    lists = (f"`symsweep query \"select trial_id, arch, transform from trials\" --results "
             f"{root}` lists them")
    if len(p) < MIN_PREFIX:
        raise NoSuchTrial(f"trial id {prefix!r}: give at least {MIN_PREFIX} characters of a "
                          f"trial id; {lists}")
    if sweep:
        Store(root, sweep).manifest_or_fail()
    sweeps = [sweep] if sweep else list_sweeps(root)
    hits: set[tuple[str, str]] = set()
    for name in sweeps:
        st = Store(root, name)
        ids = {t["trial_id"] for t in (st.read_manifest() or {}).get("trials", [])}
        ids |= set(st.read_trials_all()[0]["trial_id"].to_pylist())
        hits |= {(name, i) for i in ids if i.startswith(p)}
    if not hits:
        where = f"sweep '{sweep}'" if sweep else f"{root} (sweeps: {', '.join(sweeps) or 'none'})"
        raise NoSuchTrial(f"no trial {prefix!r} under {where}; {lists}")
    if len(hits) > 1:
        some = ", ".join(f"{i} ({s})" for s, i in sorted(hits)[:5])
        raise NoSuchTrial(f"trial id prefix {prefix!r} is ambiguous, {len(hits)} trials match: "
                          f"{some}{', ...' if len(hits) > 5 else ''}; give more characters")
    return next(iter(hits))
