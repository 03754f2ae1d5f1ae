"""What every fault test checks: one line of error, and that nothing was written."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIG2 = REPO / "sweeps" / "fig2.py"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 of its bytes (directories too, as 'dir'): compare two
    snapshots to show nothing was written, changed or removed."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(capsys, *needles: str) -> str:
    """The captured stderr: exactly one line, 'symsweep: error: ...', containing needles."""
    err = capsys.readouterr().err
    assert err.startswith("symsweep: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def attempt_row(tid: str, **kw) -> dict:
    """A finished attempt's row in the store's schema (a completed vec/nn run that reached
    97% training accuracy), with ``kw`` replacing any column."""
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = dict(trial_id=tid, attempt=1, preset="smoke", kind="train", arch="vec",
                inference="nn", transform="identity", seed=0, width=8, status="completed",
                best_test_acc=0.5, test_acc=0.5, train_acc=1.0, best_train_acc=0.97,
                started_at=t, finished_at=t, config_json=json.dumps({"arch": "vec", "seed": 0}),
                metrics_json="{}")
    base.update(kw)
    return base
