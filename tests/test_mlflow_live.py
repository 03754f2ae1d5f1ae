"""MLflow as a live view (issue 15 item 2): points logged while a trial runs, each with its step
and the time the trial measured it; one parent run per invocation with the attempt runs nested
under it; MLflow's source/git tags; the part file completes the live run (no point twice) and
MLflow can still be rebuilt from the parts alone."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import subprocess
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator.context import RunContext
from orchestrator.store import TIME_KEY, Store

REPO = Path(__file__).resolve().parents[1]
CFG = {"inference": "nn", "arch": "vec", "transform": "identity", "seed": 0, "width": 4}


def _row(tid: str, attempt: int, status: str = "completed", **kw) -> dict:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    r = dict(trial_id=tid, attempt=attempt, preset="smoke", kind="train", arch="vec",
             inference="nn", transform="identity", seed=0, status=status, best_test_acc=0.5,
             test_acc=0.5, train_acc=1.0, steps=30, started_at=t, finished_at=t,
             config_json=json.dumps(CFG), metrics_json="{}")
    r.update(kw)
    return r


def _points(client, run_id: str, key: str = "test_acc") -> list[tuple[int, int, float]]:
    return [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]


def _runs(client, sweep: str = "s") -> list:
    exp = client.get_experiment_by_name(sweep)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_live_points_then_the_part_completes_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import INVOCATION_TAG, MIRRORED_TAG, Tracker

    st = Store(str(tmp_path), "s")
    tr = Tracker(st, preset="smoke", invocation={"preset": "smoke"}, source="sweeps/s.py",
                 code_version="abc1234")
    t0 = 1_767_225_600_000  # 2026-01-01 in ms
    # two points while the attempt runs (the live view), one of them twice: logged once
    for step, dt_ms, acc in ((10, 0, 0.2), (20, 1500, 0.4), (20, 1500, 0.4)):
        tr.add_point("a", 1, CFG, step, t0 + dt_ms, {"test_acc": acc, "train_loss": 1 - acc})
    assert tr.flush_live() == 4
    c = MlflowClient(tr.uri)
    (parent,) = [r for r in _runs(c) if r.data.tags.get(INVOCATION_TAG) == "1"]
    (live,) = [r for r in _runs(c) if r.data.tags.get("trial_id") == "a"]
    assert live.info.status == "RUNNING" and MIRRORED_TAG not in live.data.tags
    assert live.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert live.data.params["arch"] == "vec"
    assert _points(c, live.info.run_id) == [(10, t0, 0.2), (20, t0 + 1500, 0.4)]
    # the attempt ends: its part holds every point (with the measured times) and one more
    hist = [{"step": 10, "test_acc": 0.2, "train_loss": 0.8, TIME_KEY: t0},
            {"step": 20, "test_acc": 0.4, "train_loss": 0.6, TIME_KEY: t0 + 1500},
            {"step": 30, "test_acc": 0.5, "train_loss": 0.5, TIME_KEY: t0 + 2700}]
    st.write_attempt(_row("a", 1), hist)
    assert tr.sync() == 1
    tr.stop("FINISHED")
    runs = _runs(c)
    assert len(runs) == 2  # the parent and ONE attempt run: the live run was completed
    (run,) = [r for r in runs if r.data.tags.get("trial_id") == "a"]
    assert run.info.run_id == live.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags[MIRRORED_TAG] == "1" and run.data.tags["part_file"]
    pts = _points(c, run.info.run_id)
    assert pts == [(10, t0, 0.2), (20, t0 + 1500, 0.4), (30, t0 + 2700, 0.5)]
    times = [t for _, t, _ in pts]
    assert times == sorted(set(times))  # distinct and increasing: MLflow's wall-time axis
    assert [s for s, _, _ in _points(c, run.info.run_id, "train_loss")] == [10, 20, 30]
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"
    # MLflow's provenance tags, on the parent and on the attempt run
    for r in (c.get_run(parent.info.run_id), run):
        tags = r.data.tags
        assert tags["mlflow.source.name"] == "sweeps/s.py"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] == getpass.getuser()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                              capture_output=True).stdout.strip()
        assert tags["mlflow.source.git.commit"] == head
    # the driver's code version on the parent; an attempt run has its own row's
    assert c.get_run(parent.info.run_id).data.tags["code_version"] == "abc1234"

    # MLflow rebuilt from the parts alone (a fresh store, as after deleting mlflow.db; MLflow
    # caches an open store per URI in a process): the same points at the same times
    rebuilt = Tracker(st, preset="smoke", mlflow_uri=f"sqlite:///{tmp_path}/rebuilt.db")
    assert rebuilt.sync() == 1
    c2 = MlflowClient(rebuilt.uri)
    (r2,) = _runs(c2)
    assert _points(c2, r2.info.run_id) == pts
    assert "mlflow.parentRunId" not in r2.data.tags  # no invocation: not nested


def test_a_live_run_without_a_part_ends_killed_and_a_later_part_completes_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import MIRRORED_TAG, Tracker

    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    # invocation 1: two attempts live; its driver dies (no stop, no part)
    dead = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    dead.add_point("a", 1, CFG, 10, t0, {"test_acc": 0.2})
    dead.add_point("b", 1, CFG, 10, t0, {"test_acc": 0.3})
    dead.flush_live()
    # ...but trial b had written its part (steps 10 and 20) before the driver died
    st.write_attempt(_row("b", 1), [{"step": 10, "test_acc": 0.3, TIME_KEY: t0},
                                    {"step": 20, "test_acc": 0.6, TIME_KEY: t0 + 10}])
    # invocation 2 (a resume): completes b's live run from its part, ends a's as KILLED
    nxt = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert nxt.sync() == 1
    nxt.stop("FINISHED")
    c = MlflowClient(nxt.uri)
    runs = _runs(c)
    assert len(runs) == 4  # two parents (one per invocation), one run per attempt
    by_tid = {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}
    a, b = by_tid["a"], by_tid["b"]
    assert a.info.status == "KILLED" and "without writing its part" in \
        a.data.tags["mlflow.note.content"]
    assert b.info.status == "FINISHED" and b.data.tags[MIRRORED_TAG] == "1"
    assert [(s, t) for s, t, _ in _points(c, b.info.run_id)] == [(10, t0), (20, t0 + 10)]
    # b stays nested under the invocation that ran it; that invocation's driver died, so its
    # parent run is ended KILLED by the next one, which ends FINISHED
    assert b.data.tags["mlflow.parentRunId"] == dead.parent_run_id
    assert c.get_run(dead.parent_run_id).info.status == "KILLED"
    assert c.get_run(nxt.parent_run_id).info.status == "FINISHED"


def test_history_records_when_each_point_was_measured(tmp_path):
    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    st.write_attempt(_row("a", 1), [{"step": 1, "test_acc": 0.1, TIME_KEY: t0},
                                    {"step": 2, "test_acc": 0.2}])  # an older point: no time
    h, _ = st.read_history()
    got = sorted(zip(h["step"].to_pylist(), h["metric"].to_pylist(),
                     h["measured_at"].to_pylist(), strict=True))
    assert got == [(1, "test_acc", dt.datetime.fromtimestamp(t0 / 1000, dt.UTC)),
                   (2, "test_acc", None)]


LIVE_SWEEP = '''
"""One finite trial that waits until its first point is in MLflow before it goes on."""
import sqlite3, time
from orchestrator.spec import Preset, Sweep

DB = {db!r}

def _in_mlflow(step):
    try:
        con = sqlite3.connect(DB, timeout=5)
        try:
            n = con.execute("select count(*) from metrics where key = 'test_acc' and step = ?",
                            (step,)).fetchone()[0]
        finally:
            con.close()
        return n > 0
    except sqlite3.Error:
        return False

def live_train(config, report=None):
    seen = 0
    for s in (10, 20, 30):
        report(dict(step=s, test_acc=s / 100, train_acc=1.0), None)
        if s == 10:  # the live view must show step 10 while this trial still runs
            for _ in range(600):
                if _in_mlflow(10):
                    seen = 1
                    break
                time.sleep(0.2)
    return dict(status="completed", best_test_acc=0.3, test_acc=0.3, test_mse=0.7,
                train_acc=1.0, steps=30, live_seen=seen)

SWEEP = Sweep(
    name="live",
    axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
    presets=dict(smoke=Preset(config=dict(dataset="synthetic", max_steps=30, eval_every=10),
                              width=dict(vec=4), seeds=(0,), max_failures=0,
                              resources=dict(train=dict(cpu=1)))),
    workers=dict(train=live_train),
)
'''


def test_a_running_trial_shows_in_mlflow_before_it_ends(tmp_path):
    """Through Ray Tune: the trial blocks after its first report until that point is in
    MLflow (bounded wait; `live_seen` records whether it was), so the point can only have
    come from the live view, never from the mirror of the part (written at the end)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep
    from orchestrator.tracking import INVOCATION_TAG

    res = tmp_path / "res"
    f = tmp_path / "live_sweep.py"
    f.write_text(textwrap.dedent(LIVE_SWEEP).format(db=str(res / "mlflow.db")))
    sw = load_sweep(f).with_overrides({"max_steps": 30, "lr_factor": 2})
    s = run_sweep(sw, "smoke", results=str(res), progress=False, num_cpus=1)
    assert s.completed == 1 and s.failed == 0
    st = Store(str(res), "live")
    assert st.read_manifest()["overrides"] == {"max_steps": 30, "lr_factor": 2.0}
    df, _ = st.latest()
    (mj,) = df["metrics_json"]
    assert json.loads(mj)["live_seen"] == 1
    c = MlflowClient(f"sqlite:///{res}/mlflow.db")
    runs = _runs(c, "live")
    (parent,) = [r for r in runs if r.data.tags.get(INVOCATION_TAG) == "1"]
    (run,) = [r for r in runs if r.data.tags.get("trial_id")]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["mlflow.source.name"] == str(f.resolve())
    assert json.loads(parent.data.params["overrides"]) == {"max_steps": 30, "lr_factor": 2.0}
    assert run.data.params["lr_factor"] == "2.0"
    pts = _points(c, run.info.run_id)
    assert [p[0] for p in pts] == [10, 20, 30]
    times = [p[1] for p in pts]
    assert times == sorted(set(times))  # the trial's measured times: distinct, increasing
    # the same times as the Parquet history (the record)
    h, _ = st.read_history()
    rec = sorted((s_, int(t.timestamp() * 1000)) for s_, m, t in zip(
        h["step"].to_pylist(), h["metric"].to_pylist(), h["measured_at"].to_pylist(),
        strict=True) if m == "test_acc")
    assert rec == [(p[0], p[1]) for p in pts]
    assert run.info.status == "FINISHED" and c.get_run(parent.info.run_id).info.status == \
        "FINISHED"


@pytest.fixture(autouse=True)
def _no_ray_left():
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def test_every_live_point_is_in_the_results_root_first_and_a_dead_attempt_is_salvaged(
        tmp_path):
    """execute_trial writes each point to the in-flight history before reporting it (so before
    MLflow can see it); an attempt that dies without its part (kill -9, lost node) leaves
    those files, and the next attempt of the trial first turns them into a failed row: the
    Parquet store holds every point MLflow has, and the next attempt gets a new number."""
    from orchestrator.spec import Trial
    from orchestrator.trial import execute_trial

    st = Store(str(tmp_path), "s")
    trial = Trial("t1", "train", dict(CFG), {"cpu": 1.0})
    ctx = RunContext(sweep="s", preset="smoke", results=str(tmp_path), code_version="x")
    seen: list[tuple[int, int]] = []

    class Killed(BaseException):  # like SIGKILL: nothing in execute_trial handles it
        pass

    def inflight() -> list:
        return st.fs.get_file_info(pafs.FileSelector(st.inflight_dir, allow_not_found=True))

    def report_fn(point, _ckpt):
        # at report time the point is already durable under the results root
        seen.append((point["step"], len(inflight())))

    def dies(config, report):
        report({"step": 10, "test_acc": 0.1})
        report({"step": 20, "test_acc": 0.2})
        raise Killed

    with pytest.raises(Killed):
        execute_trial(trial, ctx, dies, report_fn=report_fn)
    assert seen == [(10, 1), (20, 2)]
    assert st.parts() == [] and st.running_markers()["t1"]["attempt"] == 1

    def finishes(config, report):
        report({"step": 10, "test_acc": 0.3})
        return {"status": "completed", "test_acc": 0.3, "steps": 10}

    execute_trial(trial, ctx, finishes, report_fn=report_fn)
    rows = sorted(st.read_trials_all()[0].to_pylist(), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "completed")]
    assert "attempt 1 died without writing its result" in rows[0]["error"]
    assert "2 history point(s) up to step 20 were kept" in rows[0]["error"]
    assert rows[0]["config_json"] == json.dumps(CFG, sort_keys=True)
    h, _ = st.read_history()
    pts = sorted(zip(h["attempt"].to_pylist(), h["step"].to_pylist(), h["value"].to_pylist(),
                     strict=True))
    assert pts == [(1, 10, 0.1), (1, 20, 0.2), (2, 10, 0.3)]
    assert all(t is not None for t in h["measured_at"].to_pylist())
    # nothing left in flight
    assert st.running_markers() == {} and inflight() == []


def test_a_dead_drivers_attempt_is_salvaged_and_its_live_run_completed(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import MIRRORED_TAG, Tracker

    st = Store(str(tmp_path), "s")
    t0 = 1_767_225_600_000
    st.mark_running("a", 1, {"preset": "smoke", "kind": "train", "config_json":
                             json.dumps(CFG), "started_at": "2026-01-01T00:00:00+00:00"})
    point = {"step": 10, "test_acc": 0.2, TIME_KEY: t0}
    st.write_inflight("a", 1, 1, point)
    dead = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    dead.add_point("a", 1, CFG, 10, t0, {"test_acc": 0.2})
    dead.flush_live()  # ...then the driver is killed
    # the next driver (under the lock) records the dead attempt, then mirrors
    notes = st.salvage_dead_attempts()
    assert len(notes) == 1 and "trial a: attempt 1 died" in notes[0]
    nxt = Tracker(st, preset="smoke", invocation={"preset": "smoke"})
    assert nxt.sync() == 1
    nxt.stop("FINISHED")
    c = MlflowClient(nxt.uri)
    (run,) = [r for r in _runs(c) if r.data.tags.get("trial_id") == "a"]
    assert run.info.status == "FAILED" and run.data.tags[MIRRORED_TAG] == "1"
    assert "died without writing its result" in run.data.tags["error"]
    assert _points(c, run.info.run_id) == [(10, t0, 0.2)]
    assert st.next_attempt("a") == 2


def test_the_experiment_opens_on_the_runs_table_new_or_old_store(tmp_path):
    """MLflow 3's UI chooses an experiment's page from the experiment tag
    ``mlflow.experimentKind``; without it the UI guesses (GenAI here). A new store's experiment
    is created with ``custom_model_development``; an experiment of an older store (created
    without the tag) gets it at the next sync; a kind someone chose is left alone."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == ("mlflow.experimentKind",
                                                      "custom_model_development")
    st = Store(str(tmp_path), "s")
    tr = Tracker(st, preset="smoke")
    tr.sync()  # a fresh store, no part yet: the experiment is created
    c = MlflowClient(tr.uri)
    assert c.get_experiment_by_name("s").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    # an older store: the experiment exists without the tag
    uri = f"sqlite:///{tmp_path}/old.db"
    old = MlflowClient(uri)
    old.create_experiment("s")
    assert EXPERIMENT_KIND_TAG not in old.get_experiment_by_name("s").tags
    st.write_attempt(_row("a", 1), [{"step": 30, "test_acc": 0.5}])
    assert Tracker(st, preset="smoke", mlflow_uri=uri).sync() == 1
    assert old.get_experiment_by_name("s").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    # a kind set by hand is the user's choice
    uri = f"sqlite:///{tmp_path}/chosen.db"
    chosen = MlflowClient(uri)
    chosen.create_experiment("s", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(st, preset="smoke", mlflow_uri=uri).sync()
    assert chosen.get_experiment_by_name("s").tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_every_mlflow_failure_is_counted_said_and_summed_up(tmp_path, caplog, monkeypatch):
    """An MLflow outage never stops the sweep, and never goes unsaid after the first warning:
    each failure is counted, said at most every FAIL_SAY_S, and the run's summary gets one
    line saying how many failed and whether the final mirror got every attempt in."""
    from mlflow.tracking import MlflowClient

    import orchestrator.tracking as tracking

    st = Store(str(tmp_path), "s")
    st.write_attempt(_row("a", 1))
    tr = tracking.Tracker(st, preset="smoke", invocation={"preset": "smoke"},
                          source="sweeps/s.py", code_version="abc1234")
    real, down = tr._sync, [3]

    def flaky():
        if down[0]:
            down[0] -= 1
            raise ConnectionError(f"tracking server unreachable ({down[0]})")
        return real()

    monkeypatch.setattr(tr, "_sync", flaky)
    with caplog.at_level("WARNING", logger="symsweep"):
        assert tr.sync() == 0 and tr.sync() == 0  # the second: counted, not said yet
        monkeypatch.setattr(tracking, "FAIL_SAY_S", 0.0)
        assert tr.sync() == 0  # said, with the count
        tr.stop()  # the final mirror works again
    said = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(said) == 2 and "unreachable (2)" in said[0]
    assert "2 more failure(s) (3 in all), the last: ConnectionError" in said[1]
    note = tr.failure_note()
    assert "3 call(s) failed" in note and "unreachable (2)" in note and "(0)" in note
    assert "the final mirror succeeded" in note
    assert [r.data.tags.get("trial_id") for r in _runs(MlflowClient(tr.uri))
            if r.data.tags.get("trial_id")] == ["a"]

    # still down at the end: the note says the next run mirrors the rest
    st.write_attempt(_row("b", 1))
    tr2 = tracking.Tracker(st, preset="smoke", invocation={"preset": "smoke"},
                           source="sweeps/s.py", code_version="abc1234")
    monkeypatch.setattr(tr2, "_sync", lambda: (_ for _ in ()).throw(OSError("read timeout")))
    tr2.stop()
    assert "the final mirror failed too" in tr2.failure_note()
    assert tracking.Tracker(st, preset="smoke", invocation={}).failure_note() is None
