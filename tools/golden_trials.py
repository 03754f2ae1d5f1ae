"""The golden trial expansion: every sweep file x preset's trials (ids, configs, resources,
derived_from), digested, in tests/fixtures/golden_trials.json.

A trial id is the sha256 of its scientific config (orchestrator.spec.trial_id_of), and the
results of a sweep are found again by it: a change that re-keys trials makes every stored
result of those trials invisible to `resume`, tables and figures. tests/test_golden_trials.py
fails on any such change; when it is meant (a protocol fix, a new default), say so in the
commit and write the fixture again:

    .venv/bin/python tools/golden_trials.py --write     # rewrite the fixture
    .venv/bin/python tools/golden_trials.py             # print what differs from it
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "golden_trials.json"


def expansion() -> dict[str, dict[str, dict]]:
    """{sweep file name: {preset: {"trials": count, "sha256": digest of the sorted trial
    dicts, "first_ids": the first three trial ids in expansion order}}}."""
    sys.path.insert(0, str(REPO))
    from orchestrator.spec import load_sweep

    out: dict[str, dict[str, dict]] = {}
    for f in sorted(glob.glob(str(REPO / "sweeps" / "fig*.py"))):
        sw = load_sweep(f)
        per = {}
        for preset in sw.presets:
            trials = sw.expand(preset)
            blob = json.dumps(sorted((t.to_dict() for t in trials),
                                     key=lambda d: d["trial_id"]), sort_keys=True)
            per[preset] = {"trials": len(trials),
                           "sha256": hashlib.sha256(blob.encode()).hexdigest(),
                           "first_ids": [t.trial_id for t in trials[:3]]}
        out[Path(f).name] = per
    return out


def main(argv: list[str]) -> int:
    now = expansion()
    if argv[1:] == ["--write"]:
        FIXTURE.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
        return 0
    old = json.loads(FIXTURE.read_text())
    diff = [f"{s} {p}: {old.get(s, {}).get(p)} -> {now[s][p]}" for s in now for p in now[s]
            if old.get(s, {}).get(p) != now[s][p]]
    diff += [f"{s}: no longer expanded" for s in old if s not in now]
    print("\n".join(diff) or "the expansion equals the fixture")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
