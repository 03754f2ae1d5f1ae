"""Integrity under faults: nothing stale or foreign is served silently (tiles, data caches),
and no silent fallback hides damage (config_json, history, fit segments, code_version)."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
from conftest import write_image_folder

from orchestrator.context import RunContext
from orchestrator.layout import ResultsLayout
from workers.cifar10 import load_cifar10


# ====================================================================== data fingerprint
def test_image_rewritten_in_place_is_reread(tmp_path):
    """Rewriting one image in place (same name, same folder entry count, folder mtime kept)
    must invalidate the prepared cache: the new pixels are served, nothing stale."""
    from PIL import Image

    root = tmp_path / "imgs"
    write_image_folder(root, n_train=2, n_test=1)
    cache = tmp_path / "cache"
    before = load_cifar10(root, cache)
    cls_dir = root / "test" / "airplane"
    dir_st = cls_dir.stat()
    new = np.full((32, 32, 3), 7, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(new).save(buf, format="PNG")
    (cls_dir / "0000.png").write_bytes(buf.getvalue())
    os.utime(cls_dir, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))  # folder time unchanged
    after = load_cifar10(root, cache)
    i = int(np.flatnonzero(after.labels_test == 0)[0])
    assert not np.array_equal(before.x_test[i], new)
    np.testing.assert_array_equal(after.x_test[i], new)
    # nothing else changed
    mask = np.arange(len(after.x_test)) != i
    np.testing.assert_array_equal(after.x_test[mask], before.x_test[mask])


# ====================================================================== kernel tiles
def _two_tiles(root: str) -> tuple[list[dict], list[str]]:
    from orchestrator.tiles import TileCache, TileMapper, tile_key

    def tile(i: int) -> dict:
        return {"nngp": np.full((2, 2), float(i)), "ntk": np.full((2, 2), 10.0 + i)}

    kws = [dict(i=0), dict(i=1)]
    TileMapper(TileCache(ResultsLayout(root)), use_ray=False)(tile, kws)
    return kws, [tile_key(tile, kw) for kw in kws], tile


def test_swapped_tile_is_recomputed_and_reported(tmp_path, caplog):
    """Another tile's valid .npz under this tile's name (a cell 'completed' with the wrong
    kernel before) fails the checksum: recomputed, counted for the driver, nothing lost."""
    from orchestrator.tiles import TileCache, TileMapper

    kws, keys, tile = _two_tiles(str(tmp_path))
    tiles = tmp_path / "tiles"
    (tiles / f"{keys[0]}.npz").write_bytes((tiles / f"{keys[1]}.npz").read_bytes())
    cache = TileCache(ResultsLayout(str(tmp_path)))
    m = TileMapper(cache, use_ray=False)
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        out = m(tile, kws)
    assert m.computed == 1 and m.hits == 1 and cache.corrupt == 1
    np.testing.assert_array_equal(out[0]["nngp"], np.zeros((2, 2)))  # the right numbers
    np.testing.assert_array_equal(out[1]["ntk"], np.full((2, 2), 11.0))
    assert "fails its checksum" in caplog.text and keys[0] in caplog.text
    assert keys[0] in cache.corrupt_notes[0]
    # the recomputed tile was stored again, valid: a fresh reader trusts it
    again = TileCache(ResultsLayout(str(tmp_path)))
    np.testing.assert_array_equal(again.get(keys[0])["nngp"], np.zeros((2, 2)))
    assert again.corrupt == 0


def test_edited_and_truncated_tiles_are_recomputed(tmp_path):
    from orchestrator.tiles import TileCache

    kws, keys, tile = _two_tiles(str(tmp_path))
    path = tmp_path / "tiles" / f"{keys[0]}.npz"
    with np.load(path) as z:  # same layout, one number changed, old checksum kept
        flat = {k: z[k] for k in z.files}
    flat["d:nngp"] = flat["d:nngp"] + 1.0
    np.savez(path, **flat)
    c = TileCache(ResultsLayout(str(tmp_path)))
    assert c.get(keys[0]) is None and c.corrupt == 1
    path.write_bytes(path.read_bytes()[:40])
    assert c.get(keys[0]) is None and c.corrupt == 2 and "unreadable" in c.corrupt_notes[1]
    assert c.get(keys[1]) is not None and c.corrupt == 2


def test_corrupt_tile_count_reaches_the_driver(tmp_path, caplog):
    """The trial's result carries tiles_corrupt (a trial's log never reaches the driver), and
    the driver's Tune callback prints it."""
    from orchestrator.progress import ProgressCallback
    from orchestrator.spec import Trial
    from orchestrator.trial import execute_trial

    kws, keys, tile = _two_tiles(str(tmp_path))
    tiles = tmp_path / "tiles"
    (tiles / f"{keys[1]}.npz").write_bytes((tiles / f"{keys[0]}.npz").read_bytes())

    def worker(cfg, report, map_tiles):
        res = map_tiles(tile, kws)
        return {"status": "completed", "test_acc": float(res[1]["ntk"][0, 0])}

    trial = Trial("k-1", "kernel", {"arch": "fcn", "seed": 0}, {"cpu": 1}, None)
    ctx = RunContext(sweep="s", preset="p", results=str(tmp_path))
    res = execute_trial(trial, ctx, worker)
    assert res["test_acc"] == 11.0 and res["tiles_corrupt"] == 1
    assert keys[1] in res["tiles_corrupt_note"]

    class FakeTrial:
        config = {"trial": {"trial_id": "k-1"}}

    cb = ProgressCallback(total=1, title="t", on_attempt_end=lambda _t: None, enabled=False)
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        cb.on_trial_result(0, [], FakeTrial(), res)
    assert "trial k-1: 1 kernel tile(s) were corrupt" in caplog.text and keys[1] in caplog.text


# ====================================================================== silent fallbacks
def _row(tid: str, **kw) -> dict:
    import datetime as dt
    import json

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = dict(trial_id=tid, attempt=1, preset="smoke", kind="train", arch="vec",
                inference="nn", transform="identity", seed=0, width=8, status="completed",
                best_test_acc=0.5, test_acc=0.5, train_acc=0.5, best_train_acc=0.5,
                train_size=100, started_at=t, finished_at=t,
                config_json=json.dumps({"arch": "vec", "seed": 0, "flip": True,
                                        "train_size": 100}), metrics_json="{}")
    base.update(kw)
    return base


def test_corrupt_config_json_is_said(caplog):
    import pandas as pd

    from orchestrator.figures import enrich

    df = pd.DataFrame([_row("good"), _row("bad", config_json='{"arch": "vec", "fl')])
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        d = enrich(df, 0.0)
    assert "1 row(s) have a config_json that does not parse" in caplog.text
    assert "trials bad" in caplog.text and "m from the row's train_size" in caplog.text
    assert list(d["m"]) == [200.0, 100.0]  # the good row keeps its flip-counted size


def test_fit_segments_reset_is_said(caplog):
    import pandas as pd

    from orchestrator.figures.fig4 import points_and_fits

    df = pd.DataFrame(columns=["inference", "arch", "transform", "m", "ok"])
    m = {"sweep": "fr_no_such_sweep", "preset": "smoke"}  # e.g. renamed since it was run
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        *_, first, last = _points_and_fits_safe(points_and_fits, df, m)
    assert "fit segments: the sweep 'fr_no_such_sweep' does not load" in caplog.text
    assert f"using first {first} / last {last} points" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="symsweep"):  # both given: nothing to guess
        _points_and_fits_safe(points_and_fits, df, m, 2, 2)
    assert "fit segments" not in caplog.text


def _points_and_fits_safe(fn, df, m, first=None, last=None):
    """The curve maths may refuse an empty frame; the segment choice comes first."""
    from orchestrator.figures import fig4

    try:
        return fn(df, m, first, last)
    except Exception:
        f, la = fig4.fit_defaults({}, first, last)
        return None, None, f, la


def test_code_version_says_why_it_is_unknown(monkeypatch, caplog):
    import subprocess

    from orchestrator import runner

    def not_git(*a, **k):
        return subprocess.CompletedProcess(a, 128, "", "fatal: not a git repository (or any "
                                           "of the parent directories): .git\n")

    monkeypatch.setattr(runner.subprocess, "run", not_git)
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        assert runner.code_version() == "unknown (not a git checkout)"
    assert "code version unknown (not a git checkout)" in caplog.text

    def no_git(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", "git")

    monkeypatch.setattr(runner.subprocess, "run", no_git)
    assert runner.code_version().startswith("unknown (FileNotFoundError: ")


def test_unreadable_history_is_not_mirrored_as_empty(tmp_path, caplog):
    """A part whose history does not parse was mirrored with no metrics, for good. Now it is
    not mirrored (said loudly) and mirrored completely once the history is readable."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import Store
    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.0})
    st.write_attempt(_row("a"), [{"step": 3, "test_acc": 0.5}])
    (part,) = st.parts()
    hist = tmp_path / "s" / "history" / part.name
    good = hist.read_bytes()
    hist.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        assert Tracker(st).sync() == 0
    assert f"part {part.name} not mirrored, it cannot be read" in caplog.text
    hist.write_bytes(good)
    tr = Tracker(st)
    assert tr.sync() == 1
    c = MlflowClient(tr.uri)
    (run,) = c.search_runs([c.get_experiment_by_name("s").experiment_id])
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "test_acc")] == \
        [(3, 0.5)]
    # success: one definition (analysis.successful) at the preset's threshold, not 0.95:
    # best_train_acc 0.5 succeeds under success_train_acc = 0.0, as the tables count it
    from orchestrator.figures.fig2 import fig2_cells

    assert run.data.tags["success"] == "true"
    assert fig2_cells(st.latest()[0], 0.0)["n_success"].tolist() == [1]
