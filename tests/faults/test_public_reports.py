"""Public bug reports of our dependencies, tried against symsweep's own code paths (issue 25,
deliverable 3; docs/faults.md lists every report tried and its outcome). Each test names the
report it reproduces; tiny data, no Ray cluster, seconds each."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.store import LATEST_SQL, TRIAL_SCHEMA, Store, connect

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CFG = {"inference": "nn", "arch": "vec", "transform": "identity", "seed": 0, "width": 4}


def _row(tid: str, attempt: int, status: str = "completed", **kw) -> dict:
    r = dict(trial_id=tid, attempt=attempt, preset="smoke", kind="train", arch="vec",
             inference="nn", transform="identity", seed=0, status=status, best_test_acc=0.5,
             test_acc=0.5, train_acc=1.0, steps=30, started_at=T0,
             finished_at=T0 + dt.timedelta(seconds=attempt),
             config_json=json.dumps(CFG), metrics_json="{}")
    r.update(kw)
    return r


# ------------------------------------------------------------------ pyarrow / Parquet parts


def test_a_part_whose_all_null_columns_are_typed_null_reads_with_the_results_schema(tmp_path):
    """astrolabsoftware/fink-client#234, apache/arrow#11967: a column that is all null in a
    file gets Arrow type ``null`` when the writer infers the schema (pandas, from_pylist), so
    files of one dataset disagree on its type. A part written that way (by another tool, or
    an older symsweep) must read as the results schema's type, not as corrupt."""
    st = Store(str(tmp_path), "s")
    st.write_attempt(_row("a", 1), [])
    inferred = pa.Table.from_pylist([{**_row("b", 1), "sweep": "s", "error": None,
                                      "val_acc": None, "derived_from": None}])
    assert inferred.schema.field("error").type == pa.null()  # the report's situation
    pq.write_table(inferred, f"{st.trials_dir}/b-a001-00000000.parquet")
    t, corrupt = st.read_trials_all()
    assert corrupt == []
    assert t.schema == TRIAL_SCHEMA
    assert sorted(t["trial_id"].to_pylist()) == ["a", "b"]
    b = t.filter(pa.compute.equal(t["trial_id"], "b")).to_pylist()[0]
    assert b["error"] is None and b["val_acc"] is None and b["test_acc"] == 0.5
    df, corrupt = st.latest()
    assert corrupt == [] and sorted(df["trial_id"]) == ["a", "b"]


def test_rows_of_old_and_new_parts_form_a_valid_table(tmp_path):
    """apache/arrow#39670: a dataset scan with a unified schema can return a table that holds
    nulls in non-nullable fields, which then fails to cast to its own schema. The store's scan
    over an old part lacking columns and a new one must give a table that validates fully and
    casts to its own schema (every results column is nullable)."""
    st = Store(str(tmp_path), "s")
    st.write_attempt(_row("new", 1), [])
    old = pa.Table.from_pylist([{"sweep": "s", "trial_id": "old", "attempt": 1,
                                 "status": "completed", "test_acc": 0.25}],
                               schema=pa.schema([pa.field("sweep", pa.string(), False),
                                                 pa.field("trial_id", pa.string(), False),
                                                 pa.field("attempt", pa.int64(), False),
                                                 pa.field("status", pa.string(), False),
                                                 pa.field("test_acc", pa.float64(), False)]))
    pq.write_table(old, f"{st.trials_dir}/old-a001-00000000.parquet")
    t, corrupt = st.read_trials_all()
    assert corrupt == [] and t.num_rows == 2
    t.validate(full=True)
    assert all(f.nullable for f in t.schema)
    assert t.cast(t.schema).equals(t)
    old_row = t.filter(pa.compute.equal(t["trial_id"], "old")).to_pylist()[0]
    assert old_row["test_acc"] == 0.25 and old_row["arch"] is None


# ------------------------------------------------------------------ DuckDB views


def _attempts(n_trials: int) -> pa.Table:
    rows = []
    for i in range(n_trials):
        for a in range(1, 1 + (i % 3) + 1):  # 1, 2 or 3 attempts
            rows.append({**_row(f"t{i:04d}", a, status="failed" if a < (i % 3) + 1
                                else "completed", test_acc=a / 10), "sweep": "s"})
    return pa.Table.from_pylist(rows, schema=TRIAL_SCHEMA)


@pytest.mark.parametrize("threads", [1, 4])
def test_latest_view_is_one_row_per_trial_whatever_duckdbs_thread_count(threads):
    """duckdb/duckdb#4822: ``row_number() over (partition by ... order by ...)`` = 1 gave a
    result that depended on the thread count. The ``trials`` view (LATEST_SQL) must give
    exactly one row per trial, its highest attempt, on one thread and on several."""
    table = _attempts(600)
    con = duckdb.connect(config={"threads": threads})
    con.register("trials_all", table)
    got = con.execute(f"select trial_id, attempt, status from ({LATEST_SQL}) "
                      "order by trial_id").fetchall()
    assert len(got) == 600
    assert [g[0] for g in got] == [f"t{i:04d}" for i in range(600)]
    assert all(a == (i % 3) + 1 and s == "completed" for i, (_, a, s) in enumerate(got))


def test_latest_view_over_the_registered_scan_returns_every_trial(tmp_path):
    """duckdb/duckdb#24313: a window with PARTITION BY and no ORDER BY over a registered
    pyarrow RecordBatchReader silently returned zero rows. symsweep registers materialised
    Arrow tables and its window orders; the views over a real store return every trial."""
    st = Store(str(tmp_path), "s")
    for tid, attempts in (("a", 1), ("b", 2), ("c", 3)):
        for k in range(1, attempts + 1):
            st.write_attempt(_row(tid, k, status="completed" if k == attempts else "failed"),
                             [{"step": 10, "test_acc": 0.1 * k}])
    con, corrupt = connect(str(tmp_path), ["s"])
    assert corrupt == []
    assert "order by" in LATEST_SQL.split("over", 1)[1].split(")", 1)[0]
    assert con.execute("select count(*) from trials_all").fetchone()[0] == 6
    got = con.execute("select trial_id, attempt from trials order by trial_id").fetchall()
    assert got == [("a", 1), ("b", 2), ("c", 3)]
    assert con.execute("select count(*) from history").fetchone()[0] == 6


# ------------------------------------------------------------------ flax / optax checkpoints


def test_restored_optimizer_state_is_the_optimizers_own_pytree(tmp_path):
    """google/flax#1550, #1464 (fixed by #1432): an optax state restored from a checkpoint
    came back as flax.serialization's look-alike named tuples, so jax.lax.cond / tree_map
    between the restored and a fresh state failed on differing tree structures. symsweep's
    trainer checkpoint (workers/checkpoint.py) restores into the live state's own treedef;
    the restored state equals the saved one leaf for leaf (dtypes too) and mixes with a
    fresh state under lax.cond."""
    from workers.checkpoint import load_checkpoint, save_checkpoint
    from workers.models import init_params, make_model
    from workers.train import Trainer

    model = make_model("fcn", 8, depth=1)
    params = init_params(model, 0, (4, 4, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 4, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(8) % 10]
    tr = Trainer(model, x, y, lr=0.1, batch_size=4, l2=1e-3, seed=0, momentum=0.9)
    state, _ = tr.run(tr.init_state(params), 0, 3)  # momentum buffers are non-zero now
    save_checkpoint(str(tmp_path / "ck"), state, {"step": 3})
    fresh = tr.init_state(params)
    restored, meta = load_checkpoint(str(tmp_path / "ck"), fresh)
    assert meta["step"] == 3
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(fresh)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state),
                    strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    picked = jax.lax.cond(jnp.asarray(True), lambda: restored, lambda: fresh)
    assert jax.tree_util.tree_structure(picked) == jax.tree_util.tree_structure(fresh)
    # and it trains on: three more steps from the restored state = from the saved state
    a, _ = tr.run(restored, 3, 6)
    b, _ = tr.run(state, 3, 6)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.array_equal(np.asarray(u), np.asarray(v))


# ------------------------------------------------------------------ grain pipelines


def _labelled_folder(n: int):
    from workers.imagenet import ImageFolder

    return ImageFolder(root="mem", split="train", classes=tuple(str(i) for i in range(n)),
                       paths=tuple(f"mem/{i}.png" for i in range(n)),
                       labels=np.arange(n, dtype=np.int32))


def test_grain_epochs_are_permutations_of_the_chosen_images(monkeypatch):
    """google/grain#1200: shuffle, then slice, then repeat leaked images outside the slice
    into later epochs (and repeated others). symsweep's ImageNet pipeline
    (workers.imagenet.train_pipeline) chooses its images before the shuffle and slices hosts
    after the repeat: every epoch must be a permutation of exactly the chosen images, a new
    one each epoch, and the hosts' rows must partition every global batch."""
    from workers import imagenet as I

    monkeypatch.setattr(I, "_read", lambda path: np.zeros((8, 8, 3), np.uint8))
    folder = _labelled_folder(10)
    chosen = np.array([1, 3, 4, 6, 8, 9])  # a subset, as the preset's train_size picks
    epochs, batch = 4, 2
    ds = I.train_pipeline(folder, chosen, image_size=8, batch_size=batch, seed=5,
                          epochs=epochs)
    per_epoch = len(chosen) // batch
    assert len(ds) == epochs * per_epoch
    labels = [int(v) for s in range(len(ds)) for v in ds[s]["label"]]
    orders = [labels[e * len(chosen):(e + 1) * len(chosen)] for e in range(epochs)]
    for o in orders:
        assert sorted(o) == sorted(chosen.tolist())
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch
    hosts = [I.train_pipeline(folder, chosen, image_size=8, batch_size=batch, seed=5,
                              epochs=epochs, process_index=p, process_count=2)
             for p in range(2)]
    for s in range(len(ds)):
        rows = [int(v) for h in hosts for v in h[s]["label"]]
        assert sorted(rows) == sorted(int(v) for v in ds[s]["label"])


# ------------------------------------------------------------------ MLflow mirror


def _mlflow_runs(uri: str, sweep: str = "s", filter_string: str = "") -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(sweep)
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


def test_mirror_splits_what_exceeds_one_log_batch(tmp_path):
    """mlflow/mlflow#6049 (and the request limits behind amesar/mlflow-export-import#41): one
    ``log_batch`` takes at most 1,000 metrics and 100 params. The mirror of an attempt with
    130 config keys and 1,200 metric points (300 evaluations of 4 metrics) must log all of
    them, in several batches."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    cfg = {**CFG, **{f"extra_{i:03d}": i for i in range(125)}}
    hist = [{"step": 10 * (k + 1), "test_acc": k / 300, "train_acc": k / 300,
             "train_loss": 1 - k / 300, "test_mse": 0.5} for k in range(300)]
    st.write_attempt(_row("a", 1, config_json=json.dumps(cfg)), hist)
    tr = Tracker(st, preset="smoke")
    assert tr.sync() == 1
    tr.stop("FINISHED")
    (run,) = _mlflow_runs(tr.uri)
    assert len(cfg) == 130 and {k: run.data.params[k] for k in cfg} == \
        {k: str(v) for k, v in cfg.items()}
    c = MlflowClient(tr.uri)
    for key in ("test_acc", "train_acc", "train_loss", "test_mse"):
        steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [10 * (k + 1) for k in range(300)], key


def test_attempt_runs_are_found_by_their_parent_run_id(tmp_path):
    """mlflow/mlflow#7809, #1984: MLflow's UI filter only sees the parent runs' own tags and
    params, so the way to list the attempts of one invocation is a search on
    ``tags.mlflow.parentRunId`` (the documented idiom). Every attempt run the mirror logs under
    an invocation must be found that way, and by its trial_id tag."""
    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    tr = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    for tid, attempt in (("a", 1), ("a", 2), ("b", 1)):
        st.write_attempt(_row(tid, attempt), [{"step": 10, "test_acc": 0.5}])
    assert tr.sync() == 3
    tr.stop("FINISHED")
    parent = tr.parent_run_id
    kids = _mlflow_runs(tr.uri, filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted((r.data.tags["trial_id"], r.data.tags["attempt"]) for r in kids) == \
        [("a", "1"), ("a", "2"), ("b", "1")]
    assert len(_mlflow_runs(tr.uri, filter_string="tags.trial_id = 'a'")) == 2
    assert len(_mlflow_runs(tr.uri)) == 4  # and the parent itself


def test_completing_an_earlier_drivers_run_reads_its_whole_metric_history(tmp_path,
                                                                        monkeypatch):
    """mlflow/mlflow#16318, #23916: a metric history read that stops at one page (or, over
    REST without ``max_results``, returns nothing and a token that never advances). The
    mirror reads the points an earlier driver logged (to log only the missing ones) with
    MlflowClient.get_metric_history, which pages; with a page of 5 points, completing a run
    that holds 23 must log the 7 missing points and no point twice."""
    import mlflow.tracking._tracking_service.client as tsc
    from mlflow.tracking import MlflowClient

    from orchestrator.store import TIME_KEY
    from orchestrator.tracking import Tracker

    monkeypatch.setattr(tsc, "GET_METRIC_HISTORY_MAX_RESULTS", 5)
    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    dead = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    for k in range(23):
        dead.add_point("a", 1, CFG, 10 * (k + 1), t0 + k, {"test_acc": k / 30})
    dead.flush_live()  # its driver dies here: no stop, no part yet
    st.write_attempt(_row("a", 1), [{"step": 10 * (k + 1), "test_acc": k / 30,
                                     TIME_KEY: t0 + k} for k in range(30)])
    nxt = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert nxt.sync() == 1
    nxt.stop("FINISHED")
    (run,) = [r for r in _mlflow_runs(nxt.uri) if r.data.tags.get("trial_id") == "a"]
    steps = [m.step for m in MlflowClient(nxt.uri).get_metric_history(run.info.run_id,
                                                                       "test_acc")]
    assert sorted(steps) == [10 * (k + 1) for k in range(30)]


# ------------------------------------------------------------------ Ray Tune resource requests


def _trial_dict(tid: str, kind: str = "train", **resources) -> dict:
    return {"trial_id": tid, "kind": kind, "config": {"arch": "fcn"},
            "resources": {"cpu": 1, **resources}}


NODE = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 8e9, "node:10.0.0.1": 1.0}}


def test_a_request_no_node_can_hold_is_named_before_tune_waits_on_it():
    """ray-project/ray#24259 (placement groups stuck pending), #14621, #18718: a trial whose
    resource bundle fits on no node stays PENDING; without an autoscaler Tune only warns
    (every 60 s, through a logger symsweep silences) and waits forever. `unschedulable` names
    the first such trial, what it asks for and what the largest node has."""
    from orchestrator.resources import unschedulable

    fits = [_trial_dict("a"), _trial_dict("b", cpu=2, memory=4e9)]
    assert unschedulable(fits, [NODE]) is None
    msg = unschedulable(fits + [_trial_dict("c", cpu=3), _trial_dict("d", gpu=1)], [NODE])
    assert msg is not None and "\n" not in msg
    assert "2 trial(s)" in msg and "trial c" in msg and "CPU 3" in msg and "CPU 2" in msg
    # the tile task of a kernel trial with tile GPUs counts too; a dead node does not
    tiles = _trial_dict("k", kind="kernel", tile_gpu=0.5, tile_cpu=1)
    assert "trial k" in unschedulable([tiles], [NODE])
    gpu_node = {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}
    assert unschedulable([tiles], [NODE, gpu_node]) is None
    assert unschedulable([tiles], [NODE, {**gpu_node, "Alive": False}]) is not None


SWEEP_TOO_BIG = '''
from orchestrator.spec import Preset, Sweep

def fake_train(config, report=None):
    return dict(status="completed", best_test_acc=0.5, test_acc=0.5, test_mse=0.5,
                train_acc=1.0, steps=1)

SWEEP = Sweep(
    name="big",
    axes=dict(inference=["nn"], arch=["fcn"], transform=["identity"]),
    presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=1, eval_every=1),
                              width=dict(fcn=4), seeds=(0,), max_failures=0,
                              resources=dict(train=dict(cpu=2)))),
    workers=dict(train=fake_train),
)
'''


def test_a_sweep_asking_more_cpus_than_its_ray_has_stops_in_one_line(tmp_path):
    """The same report end to end: ``symsweep run --num-cpus 1`` of a sweep whose trials ask
    for 2 CPUs hung silently before (reproduced: no output, no trial, for minutes); now it
    stops at once with one line, exit code 2, and no trial row."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sweep = tmp_path / "big.py"
    sweep.write_text(SWEEP_TOO_BIG)
    res = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RAY_ADDRESS", None)
    # the timeout only turns the old hang into a failure; the new code ends within seconds
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(sweep),
                        "--results", str(res), "--num-cpus", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=420, env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "asks Ray for CPU 2" in last and "--num-cpus" in last, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert Store(str(res), "big").latest()[0].empty


def test_a_deleted_sweep_experiment_is_named_with_its_restore_command(tmp_path, caplog):
    """mlflow/mlflow#2651, #6445 (and mlflow/mlflow#814, Lightning-AI/pytorch-lightning#20556):
    an experiment deleted in the UI is only marked deleted; looking it up by name still finds
    it, and every run created in it fails ("must be in the 'active' state"). A sweep whose
    experiment was deleted then mirrored nothing, with MLflow's message and no fix, and
    retried at every sync. Now the tracker stops mirroring with one error line naming the
    experiment and the command that restores it; once restored, the next run mirrors the
    attempts it missed."""
    import logging

    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    st.write_attempt(_row("a", 1), [{"step": 10, "test_acc": 0.5}])
    first = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert first.sync() == 1
    first.stop("FINISHED")
    c = MlflowClient(first.uri)
    exp_id = c.get_experiment_by_name("s").experiment_id
    c.delete_experiment(exp_id)
    st.write_attempt(_row("b", 1), [{"step": 10, "test_acc": 0.6}])
    caplog.set_level(logging.WARNING)
    tr = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert tr.sync() == 0
    assert tr.sync() == 0
    tr.stop("FINISHED")
    assert tr.broken is not None and "\n" not in tr.broken
    assert "deleted" in tr.broken and f"mlflow experiments restore -x {exp_id}" in tr.broken
    said = [r for r in caplog.records if "deleted" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    c.restore_experiment(exp_id)
    again = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert again.sync() == 1
    again.stop("FINISHED")
    mirrored = [r for r in _mlflow_runs(again.uri) if "trial_id" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in mirrored) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in mirrored)


def test_a_live_run_deleted_in_the_ui_stops_no_other_trials_live_view(tmp_path, caplog):
    """mlflow/mlflow#689: logging to a run deleted in the UI fails ("must be in an active
    lifecycle_stage"). A trial's live run deleted while it trained made every later flush of
    the live view fail at that run, dropping the points queued behind it for the other
    trials, until the trial ended. Now that trial's live points are dropped with one warning
    naming it, the others keep arriving, and the attempt's part is still mirrored whole in
    an active run at the end."""
    import logging

    from mlflow.tracking import MlflowClient

    from orchestrator.store import TIME_KEY
    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    tr = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    for tid in "ab":
        tr.add_point(tid, 1, CFG, 10, t0, {"test_acc": 0.1})
    assert tr.flush_live() == 2
    c = MlflowClient(tr.uri)
    live = {r.data.tags["trial_id"]: r.info.run_id for r in _mlflow_runs(tr.uri)
            if "trial_id" in r.data.tags}
    c.delete_run(live["a"])  # a's queue comes first: its failure stopped b's points
    caplog.set_level(logging.WARNING)
    for k, step in enumerate((20, 30), start=1):
        for tid in "ab":
            tr.add_point(tid, 1, CFG, step, t0 + k, {"test_acc": 0.1 * k})
        assert tr.flush_live() == 1  # b's point; a's is dropped
    assert [m.step for m in c.get_metric_history(live["b"], "test_acc")] == [10, 20, 30]
    said = [r for r in caplog.records if "deleted" in r.getMessage()]
    assert len(said) == 1 and "trial a" in said[0].getMessage()
    for tid in "ab":
        st.write_attempt(_row(tid, 1), [{"step": s, "test_acc": 0.1, TIME_KEY: t0 + k}
                                        for k, s in enumerate((10, 20, 30))])
    assert tr.sync() == 2
    tr.stop("FINISHED")
    active = [r for r in _mlflow_runs(tr.uri) if "trial_id" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in active) == ["a", "b"]
    for r in active:
        assert r.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "test_acc")] == \
            [10, 20, 30]


def test_a_history_with_a_repeated_point_mirrors_each_point_once(tmp_path):
    """mlflow/mlflow#20807: ``log_batch`` with metric points already in the store (or twice
    in the batch) hits the SQL store's unique key and its IntegrityError recovery, which failed
    when the duplicates spanned several key batches. The mirror sends each (metric, step) of
    an attempt once: a history that repeats a point (a worker reporting its last evaluation
    again, even with another value) and a second sync log no second point at a step and raise
    nothing; the first value of a step is kept, as in the live view."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import TIME_KEY
    from orchestrator.tracking import Tracker

    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    pts = [{"step": 10, "test_acc": 0.1, TIME_KEY: t0}, {"step": 20, "test_acc": 0.2,
                                                          TIME_KEY: t0 + 1}]
    # the last evaluation reported again (a final eval at the same step, another value)
    st.write_attempt(_row("a", 1), pts + [{**pts[-1], "test_acc": 0.25}])
    tr = Tracker(st, preset="smoke")
    assert tr.sync() == 1
    assert tr.sync() == 0
    tr.stop("FINISHED")
    assert tr.broken is None
    (run,) = _mlflow_runs(tr.uri)
    hist = MlflowClient(tr.uri).get_metric_history(run.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in hist] == [(10, 0.1), (20, 0.2)]
