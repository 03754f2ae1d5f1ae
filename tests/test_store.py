"""Results store (Parquet parts, latest-attempt view, corrupt files, lock), tile cache,
derived rows, Fig. 2 aggregation and plot, MLflow mirror. No Ray."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.context import RunContext
from orchestrator.figures.fig2 import fig2_cells, fig2_layout, plot_fig2
from orchestrator.layout import ResultsLayout
from orchestrator.spec import Trial
from orchestrator.store import Store, connect
from orchestrator.tiles import TileCache, TileMapper, tile_key
from orchestrator.trial import materialize_derived
from workers.errors import ConfigError


def row(tid: str, attempt: int = 1, status: str = "completed", acc: float = 0.5, **kw):
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=attempt)
    base = dict(trial_id=tid, attempt=attempt, preset="smoke", kind="train", arch="vec",
                inference="nn", transform="identity", seed=0, width=8, status=status,
                best_test_acc=acc, test_acc=acc, train_acc=1.0, best_train_acc=1.0,
                started_at=t, finished_at=t, metrics_json=json.dumps({"best_test_acc": acc}))
    base.update(kw)
    return base


def test_part_files_latest_view_and_history(tmp_path):
    st = Store(str(tmp_path), "s")
    assert st.next_attempt("a") == 1
    st.write_attempt(row("a", 1, "failed", acc=None, error="boom"),
                     [{"step": 10, "test_acc": 0.2, "flag": True}])
    assert st.next_attempt("a") == 2
    st.write_attempt(row("a", 2, acc=0.6), [{"step": 10, "test_acc": 0.3},
                                            {"step": 20, "test_acc": 0.6}])
    st.write_attempt(row("b", 1, acc=0.4))
    # one file per attempt, no temporary names left, hidden names ignored
    names = sorted(os.listdir(st.trials_dir))
    assert len(names) == 3 and all(n.endswith(".parquet") and not n.startswith(".")
                                   for n in names)
    (tmp_path / "s" / "trials" / ".half-written.parquet.tmp").write_bytes(b"PAR1")
    df, corrupt = st.latest()
    assert corrupt == [] and sorted(df["trial_id"]) == ["a", "b"]
    a = df.set_index("trial_id").loc["a"]
    assert a["attempt"] == 2 and a["status"] == "completed" and a["best_test_acc"] == 0.6
    assert st.done_ids() == {"a", "b"}
    con, corrupt = connect(str(tmp_path))
    assert con.execute("select count(*) from trials_all").fetchone()[0] == 3
    assert con.execute("select count(*) from trials").fetchone()[0] == 2
    h = con.execute("select attempt, step, value from history where trial_id='a' and "
                    "metric='test_acc' order by attempt, step").fetchall()
    assert h == [(1, 10, 0.2), (2, 10, 0.3), (2, 20, 0.6)]
    with pytest.raises(ValueError, match="status"):
        st.write_attempt(row("c", status="done"))


def test_corrupt_part_is_reported_not_read(tmp_path):
    st = Store(str(tmp_path), "s")
    st.write_attempt(row("a"))
    path = st.write_attempt(row("b"))
    with open(path, "r+b") as f:  # damage the footer
        f.seek(-12, os.SEEK_END)
        f.write(struct.pack("<q", 123456789))
    df, corrupt = st.latest()
    assert list(df["trial_id"]) == ["a"]
    assert len(corrupt) == 1 and corrupt[0][0] == os.path.basename(path)
    # b is not done: a resume re-runs it
    assert st.done_ids() == {"a"}


def test_lock_names_live_driver_and_takes_over_dead_one(tmp_path):
    st = Store(str(tmp_path), "s")
    lock, note = st.acquire_lock()
    assert note is None
    with pytest.raises(ConfigError) as ei:
        Store(str(tmp_path), "s").acquire_lock()
    msg = str(ei.value)
    assert f"pid {os.getpid()}" in msg and lock["started_at"] in msg and lock["host"] in msg
    st.release_lock(lock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(st.lock_path, "w") as f:
        json.dump({**lock, "pid": dead.pid, "token": "old"}, f)
    lock2, note = st.acquire_lock()
    assert note is not None and "stale" in note and str(dead.pid) in note
    st.release_lock(lock2)
    assert st.read_lock() is None


def test_tile_cache_is_content_addressed(tmp_path):
    calls = []

    def tile(x, y, scale):
        calls.append(1)
        return {"a": {"nngp": np.outer(x, y) * scale, "ntk": np.outer(x, y)}}

    x, y = np.arange(3.0), np.ones(2)
    assert tile_key(tile, dict(x=x, y=y, scale=2)) == tile_key(tile, dict(x=x.copy(), y=y,
                                                                          scale=2))
    assert tile_key(tile, dict(x=x, y=y, scale=2)) != tile_key(tile, dict(x=x + 1e-12, y=y,
                                                                          scale=2))
    assert tile_key(tile, dict(x=x, y=y, scale=2)) != tile_key(tile, dict(x=x, y=y, scale=3))
    # stable across processes, also for a dtype argument (a class, not an array)
    code = ("import numpy as np; from orchestrator.tiles import tile_key; "
            "from workers.kernels import kernel_tile; print(tile_key(kernel_tile, dict("
            "archs=('gap',), x_rows=np.ones((2, 4, 4, 3), np.float32), dtype=np.float32)))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert len(keys) == 1 and len(keys.pop().strip()) == 32
    m = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    kws = [dict(x=x + i, y=y, scale=2.0) for i in range(4)]
    first = m(tile, kws)
    assert len(calls) == 4 and len(list((tmp_path / "tiles").glob("*.npz"))) == 4
    m2 = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    again = m2(tile, kws)
    assert len(calls) == 4 and m2.hits == 4 and m2.computed == 0
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["a"]["nngp"], b["a"]["nngp"])
        np.testing.assert_array_equal(a["a"]["ntk"], b["a"]["ntk"])
    # a corrupt tile is recomputed, not trusted
    victim = sorted((tmp_path / "tiles").glob("*.npz"))[0]
    victim.write_bytes(b"garbage")
    m3 = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    m3(tile, kws)
    assert m3.computed == 1 and m3.hits == 3



def test_a_tile_key_sees_a_change_in_any_module_of_its_package_that_the_tile_imports(
        tmp_path):
    """The key digests the tile function's module and the modules of its own package that it
    imports, transitively (workers/kernels.py and what it uses), not the one file alone:
    cached tiles of other code are never served. Equal code elsewhere gives equal keys."""
    def make(root):
        pkg = root / "tilepkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "deep.py").write_text("SCALE = 2\n")
        (pkg / "helper.py").write_text("from .deep import SCALE\n")
        (pkg / "unrelated.py").write_text("X = 1\n")
        (pkg / "tile.py").write_text("from tilepkg import helper\n\n\ndef tile(x):\n"
                                     "    return x * helper.SCALE\n")
        return pkg

    def key(root):
        code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
                "from orchestrator.tiles import tile_key; from tilepkg.tile import tile; "
                "print(tile_key(tile, {'x': 1}))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip()

    pkg = make(tmp_path / "a")
    k0 = key(tmp_path / "a")
    assert key(make(tmp_path / "b").parent) == k0  # another checkout of the same code
    (pkg / "unrelated.py").write_text("X = 2\n")
    assert key(tmp_path / "a") == k0
    (pkg / "deep.py").write_text("SCALE = 3\n")  # imported by a module the tile imports
    assert key(tmp_path / "a") != k0


def test_a_tile_function_without_source_is_keyed_by_its_bytecode_and_says_so(caplog):
    from orchestrator import tile_cache

    def define(body):
        ns = {"__name__": "symsweep_test_no_such_module"}
        exec(f"def tile(x):\n    return {body}\n", ns)
        return ns["tile"]

    with caplog.at_level("WARNING", logger="symsweep"):
        k1 = tile_key(define("x"), {"x": 1})
        assert tile_key(define("x"), {"x": 1}) == k1
        assert tile_key(define("x + 1"), {"x": 1}) != k1
        # copies unpickled by value, as Ray ships a sweep file's tile function to each trial
        # (marshal's bytes for them differed with reference counts: one tile per trial)
        from ray import cloudpickle

        copies = [cloudpickle.loads(cloudpickle.dumps(define("x"))) for _ in range(3)]
        held = [c.__code__ for c in copies[:2]]  # other reference counts
        assert {tile_key(c, {"x": 1}) for c in copies} == {k1} and held
    said = [r.getMessage() for r in caplog.records if "keyed by its bytecode" in r.getMessage()]
    assert len(said) == 1 and "symsweep_test_no_such_module.tile" in said[0]
    tile_cache._bytecode_warned.clear()


def test_derived_rows_copy_the_source(tmp_path):
    st = Store(str(tmp_path), "s")
    res = {"cpu": 1.0}
    src = Trial("src", "kernel", {"arch": "fcn", "inference": "ntk", "transform": "identity",
                                  "seed": 0}, res)
    der = Trial("der", "kernel", {"arch": "fcn", "inference": "ntk", "transform": "permutation",
                                  "seed": 0}, res, derived_from="src")
    ctx = RunContext(sweep="s", preset="smoke", results=st.root, code_version="x")
    assert materialize_derived(st, [src, der], ctx) == 0  # source not finished yet
    st.write_attempt(row("src", kind="kernel", arch="fcn", inference="ntk", acc=0.37,
                         test_mse=0.08))
    assert materialize_derived(st, [src, der], ctx) == 1
    assert materialize_derived(st, [src, der], ctx) == 0  # never twice
    df = st.latest()[0].set_index("trial_id")
    d = df.loc["der"]
    assert d["derived_from"] == "src" and d["transform"] == "permutation"
    assert d["best_test_acc"] == 0.37 and d["test_mse"] == 0.08 and d["status"] == "completed"


def test_fig2_cells_mean_std_counts_and_success(tmp_path):
    import pandas as pd

    rows = [row(f"n{i}", acc=a, seed=i, best_train_acc=bt) for i, (a, bt) in
            enumerate([(0.5, 1.0), (0.7, 0.99), (0.9, 0.5)])]  # the third did not train
    rows.append(row("d", status="diverged", acc=0.1, seed=4, best_train_acc=0.3))
    rows.append(row("k", kind="kernel", inference="ntk", acc=0.4, best_train_acc=None,
                    train_acc=None))
    cells = fig2_cells(pd.DataFrame(rows), success_train_acc=0.95)
    nn = cells[cells["inference"] == "nn"].iloc[0]
    assert nn["n_success"] == 2 and nn["n_finished"] == 4
    assert nn["mean"] == pytest.approx(0.6) and nn["std"] == pytest.approx(np.std([.5, .7],
                                                                                 ddof=1))
    k = cells[cells["inference"] == "ntk"].iloc[0]
    assert k["n_success"] == 1 and k["mean"] == pytest.approx(0.4) and k["std"] == 0
    assert list(cells["inference"]) == ["ntk", "nn"]  # paper order
    lay = fig2_layout(cells)
    assert lay.loc[("NN", "vec"), "identity"] == "60.0 ± 14.1 (2/4)"
    assert lay.loc[("NTK", "vec"), "identity"] == "40.0 (1/1)"
    out = plot_fig2(cells, tmp_path / "f.png")
    from PIL import Image

    im = Image.open(out)
    assert im.size[0] > 2 * im.size[1] * 0.9  # two panels side by side
    assert math.isnan(fig2_cells(pd.DataFrame([row("x", best_train_acc=0.1)]), 0.95)["mean"][0])


def test_success_is_best_train_acc_whatever_the_final_status():
    """App. B.1: among runs whose best training accuracy reached 95%, the best test accuracy
    along training, so a run that reached 95% and then diverged or failed counts, with its
    status said in the cell; an interrupted attempt, a run below 95% and a failed kernel cell
    do not; only each trial's latest attempt is read."""
    import pandas as pd

    from orchestrator.analysis import successful

    st_rows = [row("c", acc=0.60),                                         # completed
               row("d", status="diverged", acc=0.70, seed=1),              # 95%, then diverged
               row("f", status="failed", acc=0.65, seed=2, train_acc=None),  # 95%, then crashed
               row("low", status="diverged", acc=0.9, seed=3, best_train_acc=0.5),
               row("i", status="interrupted", acc=0.99, seed=4),
               row("kf", status="failed", kind="kernel", inference="ntk", acc=0.3,
                   best_train_acc=None, train_acc=None)]
    df = pd.DataFrame(st_rows)
    assert successful(df, 0.95).tolist() == [True, True, True, False, False, False]
    cells = fig2_cells(df[df["status"] != "interrupted"], success_train_acc=0.95)
    nn = cells[cells["inference"] == "nn"].iloc[0]
    assert (nn["n_success"], nn["n_finished"], nn["n_success_not_completed"]) == (3, 4, 2)
    assert nn["mean"] == pytest.approx(0.65)
    assert fig2_layout(cells).loc[("NN", "vec"), "identity"] == \
        "65.0 ± 5.0 (3/4, 2 diverged/failed)"


def test_a_run_that_reached_95_then_crashed_counts_from_its_latest_attempt(tmp_path):
    """A trial whose last attempt crashed after reaching 95% (its retries spent): the failed
    row keeps the running bests its reports carried, so the table counts it; an earlier
    attempt's better row does not count once a later attempt exists."""
    from orchestrator.figures import load
    from orchestrator.spec import Trial
    from orchestrator.trial import execute_trial

    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.95,
                       "trials": []})
    st.write_attempt(row("t", 1, "completed", acc=0.9, config_json="{}"))  # superseded

    def worker(cfg, report):
        report({"step": 10, "train_acc": 0.97, "test_acc": 0.61, "best_train_acc": 0.97,
                "best_test_acc": 0.62})
        raise RuntimeError("lost the node")

    trial = Trial("t", "train", {"arch": "vec", "inference": "nn", "transform": "identity",
                                 "seed": 0}, {})
    ctx = RunContext(sweep="s", preset="smoke", results=str(tmp_path))
    with pytest.raises(RuntimeError, match="lost the node"):
        execute_trial(trial, ctx, worker)
    latest = st.latest()[0].set_index("trial_id").loc["t"]
    assert latest["attempt"] == 2 and latest["status"] == "failed"
    assert latest["best_train_acc"] == pytest.approx(0.97)
    assert latest["best_test_acc"] == pytest.approx(0.62)
    df, _ = load("s", str(tmp_path))
    cells = fig2_cells(df, success_train_acc=0.95)
    assert cells["n_success"].tolist() == [1] and cells["mean"].tolist() == [0.62]


def test_mlflow_mirror_once_per_attempt_and_never_fatal(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    st.write_attempt(row("a", 1, "failed", acc=None, error="boom",
                         config_json=json.dumps({"arch": "vec", "seed": 0})),
                     [{"step": 5, "test_acc": 0.1}])
    st.write_attempt(row("a", 2, config_json=json.dumps({"arch": "vec", "seed": 0})),
                     [{"step": 5, "test_acc": 0.1}, {"step": 10, "test_acc": 0.5}])
    tr = Tracker(st, preset="smoke")
    assert tr.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert tr.sync() == 2 and tr.sync() == 0
    assert Tracker(st).sync() == 0  # a new driver finds them logged
    c = MlflowClient(tr.uri)
    runs = c.search_runs([c.get_experiment_by_name("s").experiment_id])
    assert sorted((r.data.tags["attempt"], r.data.tags["status"], r.info.status)
                  for r in runs) == [("1", "failed", "FAILED"), ("2", "completed", "FINISHED")]
    r2 = next(r for r in runs if r.data.tags["attempt"] == "2")
    assert r2.data.tags["trial_id"] == "a" and r2.data.tags["preset"] == "smoke"
    assert r2.data.params == {"arch": "vec", "seed": "0"}
    assert [(m.step, m.value) for m in c.get_metric_history(r2.info.run_id, "test_acc")] == \
        [(5, 0.1), (10, 0.5)]
    art = c.download_artifacts(r2.info.run_id, "config.json", str(tmp_path / "dl"))
    assert json.load(open(art)) == {"arch": "vec", "seed": 0}
    bad = Tracker(st, mlflow_uri="nosuchscheme://nowhere")
    assert bad.sync() == 0 and "MLflow tracking" in caplog.text


def test_crashed_kernel_computation_keeps_finished_tiles(tmp_path):
    calls = []

    def tile(i, crash_at):
        if i == crash_at:
            raise RuntimeError("node lost")
        calls.append(i)
        return np.full((2, 2), float(i))

    kws = [dict(i=i, crash_at=3) for i in range(5)]
    with pytest.raises(RuntimeError):
        TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)(tile, kws)
    assert calls == [0, 1, 2]
    # the retry (here: same tiles, no crash) computes only the missing ones
    calls.clear()
    m = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)

    def tile_ok(i, crash_at):
        calls.append(i)
        return np.full((2, 2), float(i))

    tile_ok.__qualname__ = tile.__qualname__  # same function identity as the crashed run
    out = m(tile_ok, kws)
    assert calls == [3, 4] and m.hits == 3
    assert [float(o[0, 0]) for o in out] == [0.0, 1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------- glob reader and compaction
def _snapshot(st: Store) -> dict:
    """Everything a reader sees: every attempt row, the latest view, done ids, history rows,
    the parts (as the MLflow mirror lists and reads them) and the next attempt numbers."""
    all_rows, corrupt = st.read_trials_all()
    hist, _ = st.read_history()
    df, _ = st.latest()
    key = ["trial_id", "attempt", "finished_at"]
    return {
        "all": sorted(all_rows.to_pylist(), key=lambda r: [str(r[k]) for k in key]),
        "latest": df.sort_values("trial_id").reset_index(drop=True).to_json(),
        "done": st.done_ids(),
        "hist": sorted(tuple(r.values()) for r in hist.to_pylist()),
        "parts": [(p.name, _read_part_or_error(st, p.name)) for p in st.parts()],
        "next": {t: st.next_attempt(t) for t in ("a", "b", "c", "d", "zz")},
        "index": st.attempt_index(),
        "corrupt": [n for n, _ in corrupt],
    }


def _read_part_or_error(st: Store, name: str):
    try:
        return st.read_part(name)
    except OSError as ex:  # a corrupt part (the mirror skips it the same way)
        return type(ex).__name__


def _filled_store(tmp_path) -> tuple[Store, str]:
    st = Store(str(tmp_path), "s")
    st.write_attempt(row("a", 1, "failed", acc=None, error="boom"), [{"step": 5, "test_acc": .1}])
    st.write_attempt(row("a", 2, acc=0.6), [{"step": 5, "test_acc": .2}, {"step": 9, "x": .3}])
    st.write_attempt(row("b", 1, acc=0.4))  # no history rows: an empty history part
    st.write_attempt(row("c", 1, "diverged", acc=0.1), [{"step": 3, "test_acc": 0.1}])
    bad = st.write_attempt(row("d", 1, acc=0.9), [{"step": 1, "test_acc": 0.9}])
    with open(bad, "r+b") as f:  # d's trial part is corrupt
        f.seek(-12, os.SEEK_END)
        f.write(struct.pack("<q", 123456789))
    return st, os.path.basename(bad)


def test_reader_scans_all_parts_at_once_and_reads_older_parts_without_new_columns(
        tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = Store(str(tmp_path), "s")
    for i in range(5):
        st.write_attempt(row(f"t{i}", acc=0.1 * i), [{"step": 1, "test_acc": 0.1 * i}])
    # a part written before a column existed (TRIAL_SCHEMA gains columns over time)
    old = pq.read_table(st.write_attempt(row("old", acc=0.3))).drop_columns(["node", "host"])
    pq.write_table(old, f"{st.trials_dir}/old-a001-00000000.parquet")
    os.remove(next(p for p in (tmp_path / "s" / "trials").iterdir()
                   if p.name.startswith("old-") and p.name != "old-a001-00000000.parquet"))

    def no_slow(*a, **k):
        raise AssertionError("the per-file reader ran although no part is corrupt")

    monkeypatch.setattr(Store, "_scan_slow", no_slow)
    t, corrupt = st.read_trials_all()
    assert corrupt == [] and t.num_rows == 6 and t.schema.names == list(
        __import__("orchestrator.store", fromlist=["TRIAL_SCHEMA"]).TRIAL_SCHEMA.names)
    o = [r for r in t.to_pylist() if r["trial_id"] == "old"][0]
    assert o["node"] is None and o["host"] is None and o["best_test_acc"] == 0.3
    h, hc = st.read_history()
    assert hc == [] and h.num_rows == 5
    assert isinstance(t, pa.Table)


def test_a_part_with_two_rows_is_named_corrupt(tmp_path):
    import pyarrow.parquet as pq

    st = Store(str(tmp_path), "s")
    st.write_attempt(row("a"))
    p = st.write_attempt(row("b"))
    t = pq.read_table(p)
    pq.write_table(__import__("pyarrow").concat_tables([t, t]), p)
    df, corrupt = st.latest()
    assert list(df["trial_id"]) == ["a"]
    assert corrupt == [(os.path.basename(p), "ValueError: expected 1 row, found 2")]


def test_deleting_a_corrupt_part_and_rerunning_keeps_history_apart(tmp_path):
    """issue 12: the re-run after deleting a trial's part (as status advises) was numbered
    attempt 1 again, so its history rows mixed with the first attempt's."""
    st = Store(str(tmp_path), "s")
    p = st.write_attempt(row("a", 1), [{"step": 1, "test_acc": 0.1}, {"step": 2, "test_acc": .2}])
    os.remove(p)  # the history part of attempt 1 stays
    assert st.next_attempt("a") == 2 and st.attempt_index() == {"a": 1}
    st.write_attempt(row("a", st.next_attempt("a"), acc=0.7), [{"step": 1, "test_acc": 0.5}])
    con, _ = connect(str(tmp_path))
    assert con.execute("select attempt, count(*) from history group by attempt order by 1"
                       ).fetchall() == [(1, 2), (2, 1)]
    assert con.execute("select attempt, best_test_acc from trials").fetchall() == [(2, 0.7)]


def test_compact_keeps_every_attempt_and_every_answer(tmp_path):
    st, bad = _filled_store(tmp_path)
    before = _snapshot(Store(str(tmp_path), "s"))
    assert before["corrupt"] == [bad] and before["next"]["d"] == 2  # d's history part counts
    n_before = len(os.listdir(st.trials_dir)) + len(os.listdir(st.history_dir))
    out = Store(str(tmp_path), "s").compact()
    assert out["attempts"] == 4 and out["history_parts"] == 4 and out["deleted"] == 8
    assert [n for n, _ in out["corrupt"]] == [bad] and len(out["written"]) == 2
    trials_left = sorted(os.listdir(st.trials_dir))
    assert len(trials_left) == 2 and bad in trials_left  # the corrupt part stays, named
    hist_left = sorted(os.listdir(st.history_dir))
    assert bad in hist_left and len(hist_left) == 2  # d's history stays loose (orphan)
    assert len(trials_left) + len(hist_left) < n_before
    assert _snapshot(Store(str(tmp_path), "s")) == before
    assert Store(str(tmp_path), "s").compact()["attempts"] == 0  # nothing new: nothing done
    # later attempts land in loose parts again and fold into a second file
    st2 = Store(str(tmp_path), "s")
    assert st2.next_attempt("a") == 3
    st2.write_attempt(row("a", 3, acc=0.8), [{"step": 5, "test_acc": 0.8}])
    mid = _snapshot(Store(str(tmp_path), "s"))
    assert st2.latest()[0].set_index("trial_id").loc["a", "attempt"] == 3
    assert len(mid["all"]) == len(before["all"]) + 1
    assert Store(str(tmp_path), "s").compact()["attempts"] == 1
    assert _snapshot(Store(str(tmp_path), "s")) == mid
    con, corrupt = connect(str(tmp_path))
    assert con.execute("select count(*) from trials_all").fetchone()[0] == 5
    assert con.execute("select count(*) from trials").fetchone()[0] == 3
    assert [c[0] for c in corrupt] == [f"s/trials/{bad}"]


def test_compaction_crash_before_deleting_parts_loses_and_doubles_nothing(tmp_path,
                                                                           monkeypatch):
    st, bad = _filled_store(tmp_path)
    before = _snapshot(Store(str(tmp_path), "s"))

    def crash(self):  # dies after the compacted files are written and 3 parts deleted
        for n in sorted(os.listdir(self.trials_dir))[:3]:
            if not n.startswith("compacted-") and n != bad:
                os.remove(f"{self.trials_dir}/{n}")
        raise OSError("killed during compaction")

    monkeypatch.setattr(Store, "_delete_folded", crash)
    with pytest.raises(OSError, match="killed"):
        Store(str(tmp_path), "s").compact()
    monkeypatch.undo()
    # the compacted files exist next to loose parts they fold: read once, not twice
    left = os.listdir(st.trials_dir)
    assert any(n.startswith("compacted-") for n in left) and len(left) == 3
    assert len(os.listdir(st.history_dir)) == 6
    assert _snapshot(Store(str(tmp_path), "s")) == before
    out = Store(str(tmp_path), "s").compact()  # finishes the job, folds nothing twice
    assert out["attempts"] == 0 and out["deleted"] == 5
    assert _snapshot(Store(str(tmp_path), "s")) == before


def test_compact_is_refused_while_a_driver_runs(tmp_path):
    from orchestrator.cli import main

    st, _ = _filled_store(tmp_path)
    st.write_manifest({"sweep": "s", "preset": "smoke", "trials": []})
    lock, _ = st.acquire_lock()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        Store(str(tmp_path), "s").compact()
    assert len(os.listdir(st.trials_dir)) == 5  # nothing touched
    # the driver itself may compact under its own lock (and keeps it)
    assert Store(str(tmp_path), "s").compact(held_lock=lock)["attempts"] == 4
    assert st.read_lock()["token"] == lock["token"]
    with pytest.raises(ConfigError, match="needs the driver lock"):
        Store(str(tmp_path), "s").compact(held_lock={"token": "not-ours"})
    st.release_lock(lock)
    st.write_attempt(row("e", 1))
    assert main(["compact", "s", "--results", str(tmp_path)]) == 1  # 1: a corrupt part left
    left = sorted(os.listdir(st.trials_dir))  # two compacted files and the corrupt part
    assert len(left) == 3 and sum(n.startswith("compacted-") for n in left) == 2
    assert st.read_lock() is None and sorted(Store(str(tmp_path), "s").done_ids()) == \
        ["a", "b", "c", "e"]


def test_status_query_and_mirror_answer_the_same_after_compaction(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main
    from orchestrator.tracking import Tracker

    st, bad = _filled_store(tmp_path)
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.95,
                       "trials": [{"trial_id": t, "kind": "train"} for t in "abcde"]})
    args = ["--results", str(tmp_path)]
    sql = "select trial_id, attempt, status from trials_all order by all"

    def answers():
        out = []
        for argv in (["status", "s", *args], ["query", sql, *args, "--format", "csv"],
                     ["query", "select * from history order by all", *args, "--format", "csv"]):
            code = main(argv)
            out.append((code, capsys.readouterr().out))
        return out

    before = answers()
    assert before[0][0] == 1 and bad in before[0][1]  # status names the corrupt part
    assert main(["compact", "s", *args]) == 1
    capsys.readouterr()
    assert answers() == before
    # an attempt folded before the mirror saw it is still mirrored, with its history
    tr = Tracker(Store(str(tmp_path), "s"), preset="smoke")
    assert tr.sync() == 4 and tr.sync() == 0
    c = MlflowClient(tr.uri)
    runs = c.search_runs([c.get_experiment_by_name("s").experiment_id])
    r = next(r for r in runs if r.data.tags["trial_id"] == "a" and r.data.tags["attempt"] == "2")
    assert [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "test_acc")] == \
        [(5, 0.2)]


def test_an_unreadable_compacted_file_is_named_not_skipped(tmp_path):
    st, _ = _filled_store(tmp_path)
    out = st.compact()
    trials_file = next(f for f in out["written"] if "/trials/" in f)
    with open(trials_file, "r+b") as f:
        f.seek(-12, os.SEEK_END)
        f.write(struct.pack("<q", 123456789))
    with pytest.raises(ConfigError, match=os.path.basename(trials_file)):
        Store(str(tmp_path), "s").latest()


def test_non_local_filesystem_paths(monkeypatch):
    """The object-store branches (no glob, no flock: listing-based next_attempt, lock written
    then read back after a settle time) on pyarrow's in-memory mock filesystem."""
    import pyarrow.fs as pafs

    from orchestrator import layout as layout_mod
    from orchestrator import store as store_mod

    fs = pafs._MockFileSystem()
    monkeypatch.setattr(layout_mod, "resolve_root", lambda root: (fs, "/bucket"))
    st = Store("mock://bucket", "s")
    assert not isinstance(st.fs, pafs.LocalFileSystem)
    p = st.write_attempt(row("a", 1, "failed", acc=None), [{"step": 1, "test_acc": 0.1}])
    st.write_attempt(row("b", 1, acc=0.4))
    fs.delete_file(p)  # a deleted trial part: its history part still counts
    assert st.next_attempt("a") == 2 and st.next_attempt("b") == 2
    st.write_attempt(row("a", 2, acc=0.6), [{"step": 1, "test_acc": 0.6}])
    before = _snapshot(st)
    monkeypatch.setattr(store_mod.time, "sleep", lambda s: None)  # the lock's settle time
    out = st.compact()
    assert out["attempts"] == 2 and out["history_parts"] == 2
    assert _snapshot(Store("mock://bucket", "s")) == before
    lock, _ = st.acquire_lock()
    with pytest.raises(ConfigError, match="already running"):
        Store("mock://bucket", "s").acquire_lock()
    st.release_lock(lock)


def test_derived_rows_list_the_store_a_fixed_number_of_times(tmp_path, monkeypatch):
    """materialize_derived numbers its rows from one attempt index, not a listing per row."""
    st = Store(str(tmp_path), "s")
    res = {"cpu": 1.0}
    cfg = {"arch": "fcn", "inference": "ntk", "seed": 0}
    src = Trial("src", "kernel", {**cfg, "transform": "identity"}, res)
    ders = [Trial(f"d{i}", "kernel", {**cfg, "transform": f"t{i}"}, res, derived_from="src")
            for i in range(8)]
    st.write_attempt(row("src", kind="kernel", arch="fcn", inference="ntk", acc=0.3))
    st.write_attempt(row("d3", 1, "failed", acc=None))  # d3's next row is attempt 2
    calls = []
    real = Store._list
    monkeypatch.setattr(Store, "_list", lambda self, d: calls.append(d) or real(self, d))
    ctx = RunContext(sweep="s", preset="smoke", results=st.root, code_version="x")
    assert materialize_derived(st, [src, *ders], ctx) == 8
    assert len(calls) <= 3  # latest (trials) + attempt index (trials, history)
    df = st.latest()[0].set_index("trial_id")
    assert df.loc["d3", "attempt"] == 2 and df.loc["d0", "attempt"] == 1
