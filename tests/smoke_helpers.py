"""Helpers several test files share: a sweep's whole smoke preset through the CLI, and a fig2
smoke store written from the real expansion (rows are then added by each test)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.spec import Trial, load_sweep
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[1]


def run_smoke_through_cli(sweep_file: Path, name: str, tmp_path: Path) -> None:
    """`symsweep run SWEEP --preset smoke`, then `table` and `plot` NAME, into
    ``tmp_path/results``; each exits 0 and the PNG is written."""
    from orchestrator.cli import main

    res = str(tmp_path / "results")
    assert main(["run", str(sweep_file), "--preset", "smoke", "--results", res,
                 "--no-progress", "--no-report"]) == 0
    assert main(["table", name, "--results", res]) == 0
    assert main(["plot", name, "--results", res]) == 0
    assert (tmp_path / "results" / name / f"{name}.png").exists()


def fig2_smoke_store(root: Path, keep: Callable[[dict], bool]) -> tuple[Store, list[Trial]]:
    """A fig2 store under ``root`` whose manifest holds the smoke expansion's trials whose
    config ``keep`` accepts (derived cells as the real expansion makes them); no rows yet."""
    sw = load_sweep(REPO / "sweeps" / "fig2.py")
    trials = [t for t in sw.expand("smoke") if keep(t.config)]
    st = Store(str(root), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "source": sw.source, "dedupe": True,
                       "only": None, "success_train_acc": 0.0,
                       "trials": [t.to_dict() for t in trials]})
    return st, trials
