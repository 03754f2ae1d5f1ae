"""MLflow under races: drivers starting at once on a fresh results root share one SQLite
``mlflow.db``; its first initialisation (schema creation + migrations) must not be run by two
processes at once, and a store left broken is reported in one line naming the fix."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from fault_helpers import attempt_row

from orchestrator.store import Store

ROOT = Path(__file__).resolve().parents[2]



DRIVER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import mlflow.tracking, mlflow.store.tracking.sqlalchemy_store  # imports before the barrier
    from orchestrator.store import Store
    from orchestrator.tracking import Tracker
    root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Path(root, "barrier", name).touch()
    while len(list(Path(root, "barrier").iterdir())) < n:  # all start their mirror together
        time.sleep(0.0005)
    tr = Tracker(Store(root, name))
    print("SYNCED", tr.sync(), getattr(tr, "broken", None), flush=True)
''')


def test_drivers_starting_at_once_share_a_fresh_mlflow_db(tmp_path):
    """Three drivers, three sweeps, one fresh results root: every run is mirrored, nobody
    warns, and the database is usable afterwards (it was left half-migrated)."""
    n = 3
    names = [f"s{i}" for i in range(n)]
    for name in names:
        Store(str(tmp_path), name).write_attempt(attempt_row(f"{name}t"),
                                                 [{"step": 1, "test_acc": 0.5}])
    (tmp_path / "barrier").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), name, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in names]
    outs = [p.communicate(timeout=600) for p in procs]
    for (out, err), name in zip(outs, names, strict=True):
        assert "SYNCED 1 None" in out, (name, out, err[-2000:])
        assert "MLflow tracking" not in err, err[-2000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for name in names:
        runs = c.search_runs([c.get_experiment_by_name(name).experiment_id])
        assert [r.data.tags["trial_id"] for r in runs] == [f"{name}t"]
        assert runs[0].data.tags["symsweep.mirrored"] == "1"
    # a later driver still mirrors (it logged 0 runs forever before)
    Store(str(tmp_path), "later").write_attempt(attempt_row("latert"), [])
    from orchestrator.tracking import Tracker

    assert Tracker(Store(str(tmp_path), "later")).sync() == 1


ONE_SYNC = textwrap.dedent('''
    import sys
    from orchestrator.store import Store
    from orchestrator.tracking import Tracker
    tr = Tracker(Store(sys.argv[1], sys.argv[2]))
    print("SYNCED", tr.sync(), tr.sync(), flush=True)
''')


def _sync_in_new_process(root: Path, name: str) -> tuple[str, str]:
    """A new driver's mirror (MLflow caches an opened store per process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", ONE_SYNC, str(root), name], capture_output=True,
                       text=True, env=env, timeout=600)
    return p.stdout, p.stderr


def test_broken_mlflow_db_is_one_line_naming_the_fix(tmp_path):
    """A half-migrated mlflow.db (schema ahead of its alembic version, as concurrent
    migrations leave it): one error line saying to delete it; the Parquet record is intact and
    a new database gets every run."""
    st = Store(str(tmp_path), "s")
    st.write_attempt(attempt_row("a"), [{"step": 1, "test_acc": 0.5}])
    from orchestrator.tracking import Tracker

    assert Tracker(st).sync() == 1
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:  # an older revision recorded over the newer tables
        con.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")
    st.write_attempt(attempt_row("b"), [])
    out, err = _sync_in_new_process(tmp_path, "s")
    assert "SYNCED 0 0" in out, err[-2000:]
    lines = [ln for ln in err.splitlines() if "cannot be opened" in ln]
    assert len(lines) == 1, err[-2000:]  # said once (not at every sync), in one line
    assert f"delete {db}" in lines[0] and "out-of-date database schema" in lines[0]
    assert sorted(st.latest()[0]["trial_id"]) == ["a", "b"]  # nothing lost
    db.unlink()
    out, err = _sync_in_new_process(tmp_path, "s")
    assert "SYNCED 2 0" in out, err[-2000:]  # the fix works: every run mirrored again
