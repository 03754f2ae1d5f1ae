"""Golden trial ids (issue 22, item 6): re-keying stored results is a decision, not an accident.

A trial's results are found again by its id (the sha256 of its scientific config): a change
to a default, a preset or the id function that re-keys trials hides every stored result of
those trials from `resume`, tables and figures. This compares every sweep x preset expansion
(ids, configs, resources, derived_from) with tests/fixtures/golden_trials.json; when a change
is meant, rewrite the fixture with `tools/golden_trials.py --write` and say so in the commit.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from orchestrator.spec import trial_id_of

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("golden_trials",
                                                  REPO / "tools" / "golden_trials.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_every_sweep_and_preset_expands_to_its_golden_trials():
    tool = _tool()
    old = json.loads(tool.FIXTURE.read_text())
    now = tool.expansion()
    changed = sorted(f"{s} {p}" for s in set(old) | set(now)
                     for p in set(old.get(s, {})) | set(now.get(s, {}))
                     if old.get(s, {}).get(p) != now.get(s, {}).get(p))
    assert not changed, (
        f"trials re-keyed or changed in: {', '.join(changed)}. If meant, run "
        "`.venv/bin/python tools/golden_trials.py --write` and say so in the commit (stored "
        "results of the old ids are no longer found)")


def test_the_id_function_itself_is_golden():
    """Independent of any sweep file: the id of a fixed config is a fixed string."""
    cfg = {"arch": "gap", "inference": "ntk", "transform": "identity", "seed": 0,
           "depth": 8, "width": None, "dataset": "cifar10", "image_size": 32,
           "train_size": 45000, "test_size": 10000}
    assert trial_id_of(cfg) == "508aca1be8748a18"
    assert trial_id_of({**cfg, "seed": 1}) != "508aca1be8748a18"
