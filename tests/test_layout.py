"""orchestrator/layout.py and orchestrator/context.py: one place names every path under a
results root, and one typed, frozen run context reaches every attempt (issue 22, item 1)."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest

from orchestrator.context import RunContext
from orchestrator.layout import ResultsLayout
from orchestrator.spec import Trial
from orchestrator.stopping import request_stop
from orchestrator.store import Store
from orchestrator.trial import execute_trial


def _train_worker(cfg, report):
    """A stand-in finite trainer: two reports, each with a checkpoint directory."""
    import tempfile

    for step in (1, 2):
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "state.bin"), "wb") as f:
            f.write(bytes([step]))
        report({"step": step, "train_acc": 0.5 * step}, d)
    return {"status": "completed", "best_test_acc": 0.4, "train_acc": 1.0}


def _kernel_worker(cfg, report, map_tiles):
    """A stand-in kernel cell: two tiles through the cache, and test predictions."""
    def tile(i: int) -> dict:
        return {"nngp": np.full((2, 2), float(i))}

    out = map_tiles(tile, [dict(i=0), dict(i=1)])
    return {"status": "completed", "test_acc": float(out[1]["nngp"][0, 0]),
            "predictions": np.eye(3, dtype=np.float32)}


def test_every_file_a_run_writes_is_a_path_the_layout_names(tmp_path):
    """A manifest, the driver lock, a stop request, a finite attempt (checkpoints, history,
    row, log) and a kernel cell (tiles, predictions, log): each file lands under a path of
    `ResultsLayout`, so no component joins paths of its own."""
    root = str(tmp_path / "res")
    lay = ResultsLayout(root, "sw")
    st = Store(lay)
    st.write_manifest({"sweep": "sw", "trials": []})
    lock, _ = st.acquire_lock()
    ctx = RunContext(sweep="sw", preset="smoke", results=root, code_version="x",
                     driver_token=lock["token"])
    train = Trial("ttrain", "train", {"arch": "fcn", "seed": 0, "keep_checkpoints": 0},
                  {"cpu": 1})
    kernel = Trial("tkernel", "kernel", {"arch": "fcn", "seed": 0}, {"cpu": 1})
    assert execute_trial(train, ctx, _train_worker)["status"] == "completed"
    assert execute_trial(kernel, ctx, _kernel_worker)["test_acc"] == 1.0
    request_stop(lay, lock["token"], "symsweep stop")

    files = sorted(os.path.join(d, f).replace(os.sep, "/")
                   for d, _, fs in os.walk(root) for f in fs if not f.startswith("."))
    named_files = {lay.manifest, lay.driver_lock, lay.stop_request,
                   lay.predictions("tkernel", 1), lay.log("ttrain", 1), lay.log("tkernel", 1)}
    named_dirs = (lay.trials, lay.history, lay.tiles, lay.checkpoints("ttrain"))
    stray = [f for f in files if f not in named_files and
             not any(f.startswith(d + "/") for d in named_dirs)]
    assert stray == []
    # ...and each named place was written
    for d in named_dirs:
        assert any(f.startswith(d + "/") for f in files), d
    assert named_files <= set(files)
    # the attempts in flight left nothing behind once their parts were written
    assert not any(f.startswith((lay.running + "/", lay.inflight + "/")) for f in files)
    st.release_lock(lock)


def test_layout_paths_on_an_object_store_uri_and_without_a_sweep(tmp_path):
    lay = ResultsLayout(f"file://{tmp_path}/res", "fig2")
    assert lay.dir == f"{tmp_path}/res/fig2" and lay.tiles == f"{tmp_path}/res/tiles"
    assert lay.tune_storage == f"file://{tmp_path}/res/fig2/_tune"  # Tune takes the URI
    assert lay.figure() == f"file://{tmp_path}/res/fig2/fig2.png"
    assert ResultsLayout("res", "fig2").figure() == "res/fig2/fig2.png"  # as the user typed it
    assert ResultsLayout("res", "fig2").dir == os.path.abspath("res/fig2")
    root_only = ResultsLayout(str(tmp_path))
    assert root_only.tiles == f"{tmp_path}/tiles"
    with pytest.raises(ValueError, match="names no sweep"):
        root_only.manifest  # noqa: B018
    other = lay.sweep_named("fig3")
    assert other.dir == f"{tmp_path}/res/fig3" and other.fs is lay.fs


def test_run_context_is_frozen_picklable_and_carries_its_layout(tmp_path):
    ctx = RunContext(sweep="fig2", preset="smoke", results=str(tmp_path), code_version="v",
                     data_dir="/data", fault={"crash_at_step": 3, "trials": None})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.preset = "paper"  # type: ignore[misc]
    assert ctx.layout.manifest == f"{tmp_path}/fig2/sweep.json"
    back = pickle.loads(pickle.dumps(ctx))
    assert back == ctx and back.layout.manifest == ctx.layout.manifest
    assert ctx.worker_paths() == {"data_dir": "/data"}
    assert RunContext(sweep="s", preset="p", results="r").worker_paths() == {}
