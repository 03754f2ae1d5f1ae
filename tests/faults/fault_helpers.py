"""What every fault test checks: one line of error, and that nothing was written."""

from __future__ import annotations

import hashlib
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
