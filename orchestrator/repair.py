"""Rebuild a damaged manifest (``sweep.json``) from the sweep file, when that is unambiguous.

The manifest records what the last ``run`` expanded: preset, ``--only`` selection, ``--set``
overrides, data folders and the trial list. A crash or power loss before symsweep wrote files
durably could leave it zero-length or cut short; the trial parts are intact. The parts say which
trials ran and at which preset, but not the selection or the overrides. So the manifest is
rebuilt only when the repository's ``sweeps/<name>.py`` at the parts' one preset expands to
exactly the trials the parts hold (no ``--only``, no ``--set`` that changed a config): then the
rebuilt manifest lists the same trials the lost one did. Otherwise the repair is refused with
the command that rewrites it: ``symsweep run`` with the original selection (finished trials are
kept, nothing re-runs).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestrator.spec import SWEEPS_DIR, Trial, file_sha256, load_sweep, select_trials
from orchestrator.store import ManifestDamagedError, Store, now_utc
from workers.errors import ConfigError

log = logging.getLogger("symsweep")


def _repair_command(results: str, sweep: str, preset: str | None,
                    only: dict[str, list[str]] | None = None) -> str:
    sel = "".join(f" --only {k}={','.join(v)}" for k, v in (only or {}).items())
    cmd = f"`symsweep run sweeps/{sweep}.py --preset {preset or 'PRESET'}{sel} --results {results}`"
    what = ("(the selection its results fit; add any --set you ran it with)" if only else
            "with the --only / --set you ran it with")
    return f"{cmd} {what}: finished trials are kept, nothing re-runs"


def _guess_only(trials: list[Trial], axes: list[str], ids: set[str]
                ) -> dict[str, list[str]] | None:
    """The ``--only`` over the sweep's axes whose selection is exactly ``ids``, if any."""
    have = [t for t in trials if t.trial_id in ids]
    only = {}
    for ax in axes:
        vals = sorted({str(t.config.get(ax)) for t in have})
        if vals != sorted({str(t.config.get(ax)) for t in trials}):
            only[ax] = vals
    if not only:
        return None
    try:
        sel = select_trials(trials, only)
    except ConfigError:
        return None
    return only if {t.trial_id for t in sel} == ids else None


def rebuild_manifest(results: str, sweep: str, damage: ManifestDamagedError, *,
                     write: bool = True) -> dict[str, Any]:
    """The manifest of ``sweep`` under ``results`` rebuilt from ``sweeps/<sweep>.py``, written
    back atomically when ``write`` (a warning says so). Raises ConfigError (one line: what is
    damaged, why it cannot be rebuilt, the command that repairs it) when the parts hold no
    trials, more than one preset, or trials the file's expansion does not match exactly."""
    st = Store(results, sweep)
    rows = st.read_trials_all()[0]
    presets = sorted({p for p in rows.column("preset").to_pylist() if p})
    ids = set(rows.column("trial_id").to_pylist())
    path = SWEEPS_DIR / f"{sweep}.py"

    def refuse(why: str, only: dict[str, list[str]] | None = None) -> ConfigError:
        return ConfigError(f"the manifest {damage.path} of sweep '{sweep}' is damaged "
                           f"({damage.why}) and cannot be rebuilt ({why}): rewrite it with "
                           + _repair_command(results, sweep, presets[0] if len(presets) == 1
                                             else None, only))

    if not ids:
        raise refuse("no trial has a result yet")
    if len(presets) != 1:
        raise refuse(f"the results hold presets {presets}")
    if not path.is_file():
        raise refuse(f"no sweep file {path}")
    sw = load_sweep(path)
    preset = presets[0]
    try:
        trials = sw.expand(preset, dedupe=True)
    except ConfigError as ex:
        raise refuse(f"{path} does not expand preset {preset!r}: {ex}") from None
    want = {t.trial_id for t in trials}
    if ids - want:
        raise refuse(f"{len(ids - want)} of the results' {len(ids)} trials are not in {path}'s "
                     f"preset {preset!r}: a run with --set, or another version of the file")
    if ids != want:
        raise refuse(f"the results hold {len(ids)} of the {len(want)} trials of preset "
                     f"{preset!r}: a run with --only, or one that had not finished",
                     _guess_only(trials, list(sw.axes), ids))
    fs_root = results if "://" in results else os.path.abspath(results)
    m = {"sweep": sw.name, "preset": preset, "source": str(path), "dedupe": True,
         "source_sha256": file_sha256(path), "only": None, "results": fs_root,
         "overrides": None, "success_train_acc": sw.preset(preset).success_train_acc,
         "data_dir": None, "cache_dir": None, "written_at": now_utc().isoformat(),
         "rebuilt": f"from {path} after the manifest was damaged ({damage.why})",
         "trials": [t.to_dict() for t in trials]}
    if write:
        st.write_manifest(m)
    log.warning("the manifest %s was damaged (%s): rebuilt it from %s at preset %s (all %d "
                "trials of the results match its expansion)%s", damage.path, damage.why, path,
                preset, len(want),
                "" if write else " for this command only (the folder is read-only)")
    return m
