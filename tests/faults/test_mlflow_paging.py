"""The MLflow mirror at 10^4 runs: repairing half-logged runs while paging through the runs
must not make it mirror other parts a second time (mlflow/mlflow issue 20546's pattern: the
page token is an offset, and deleting runs of one page shifted the next page past as many)."""

from __future__ import annotations

import os
import sqlite3
import uuid

from fault_helpers import attempt_row

from orchestrator.store import Store

N_RUNS = 10_010  # two pages and more of MLflow's largest page (5,000 runs)


def _clone_runs(db: str, template: str, runs: list[tuple[str, int]]) -> None:
    """Insert runs (part file name, start_time ms) into the MLflow SQLite store as copies of
    the completely mirrored run ``template`` (its row and tags): a sweep's history at 10^4
    runs in a second, where logging each through MLflow would take minutes."""
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("pragma table_info(runs)")]
    row = dict(zip(cols, con.execute("select * from runs where run_uuid = ?",
                                     (template,)).fetchone(), strict=True))
    tags = con.execute("select key, value from tags where run_uuid = ?", (template,)).fetchall()
    run_rows, tag_rows = [], []
    for part, start in runs:
        rid = uuid.uuid4().hex
        run_rows.append(tuple({**row, "run_uuid": rid, "name": part, "start_time": start,
                               "artifact_uri": f"{row['artifact_uri']}/{rid}"}[c]
                              for c in cols))
        trial = part.split("-")[0]
        for k, v in tags:
            v = {"part_file": part, "trial_id": trial}.get(k, v)
            tag_rows.append((k, v, rid))
    con.executemany(f"insert into runs values ({','.join('?' * len(cols))})", run_rows)
    con.executemany("insert into tags values (?, ?, ?)", tag_rows)
    con.commit()
    con.close()


def test_mirror_is_exact_at_ten_thousand_runs_with_half_logged_ones(tmp_path, caplog):
    """10,010 mirrored runs, the 3 newest half-logged (a driver killed while mirroring them):
    a sync repairs those 3 and mirrors exactly their 3 parts again. Paging while deleting made
    the second page skip the 3 runs at positions 5,000 to 5,002 (newest first), whose parts
    were then mirrored a second time: 5,013 active runs were left for 5,010 parts then."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import MIRRORED_TAG, Tracker

    st = Store(str(tmp_path), "s")
    st.write_manifest({"sweep": "s", "preset": "smoke", "success_train_acc": 0.95})
    half = [os.path.basename(st.write_attempt(attempt_row(f"h{i}"), [{"step": 1}]))
            for i in range(3)]
    edge = [os.path.basename(st.write_attempt(attempt_row(f"e{i}"), [{"step": 1}]))
            for i in range(3)]
    assert Tracker(st).sync() == 6
    db = str(tmp_path / "mlflow.db")
    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name("s").experiment_id
    rid = {r.data.tags["part_file"]: r.info.run_id for r in c.search_runs([exp])}
    # newest first, as search_runs pages: the 3 half-logged runs, 4,997 others, the 3 edge
    # runs (positions 5,000-5,002: the first of the second page), 5,007 others
    t0 = 1_800_000_000_000
    order = half + [f"f{k}-a1-00000000.parquet" for k in range(4997)] + edge + \
        [f"g{k}-a1-00000000.parquet" for k in range(N_RUNS - 5003)]
    con = sqlite3.connect(db)
    for pos, part in enumerate(order):
        if part in rid:
            con.execute("update runs set start_time = ? where run_uuid = ?",
                        (t0 - pos, rid[part]))
    for part in half:  # killed while mirrored: RUNNING, the mark (set last) missing
        con.execute("update runs set status = 'RUNNING' where run_uuid = ?", (rid[part],))
        con.execute("delete from tags where run_uuid = ? and key = ?", (rid[part], MIRRORED_TAG))
    con.commit()
    con.close()
    _clone_runs(db, rid[edge[0]], [(p, t0 - pos) for pos, p in enumerate(order) if p not in rid])

    tr = Tracker(st)
    with caplog.at_level("WARNING", logger="symsweep"):
        assert tr.sync() == 3 and tr.repaired_runs == 3
    assert caplog.text.count("left half-logged") == 3
    runs = []
    token = None
    while True:
        page = c.search_runs([exp], max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    assert len(runs) == N_RUNS  # as many runs as parts: nothing twice, nothing lost
    per_part: dict[str, int] = {}
    for r in runs:
        per_part[r.data.tags["part_file"]] = per_part.get(r.data.tags["part_file"], 0) + 1
    assert {p: per_part[p] for p in half + edge} == {p: 1 for p in half + edge}
    assert all(r.data.tags.get(MIRRORED_TAG) == "1" for r in runs)
    assert Tracker(st).sync() == 0
