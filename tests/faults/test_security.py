"""Results folders are shared (NFS, buckets), so they are an attack surface: a results folder is
data, never code, and `symsweep query` cannot change the record or touch other files.

Before issue 12, `symsweep resume` imported the Python file named by ``source`` in
``sweep.json`` (so did the fig4/figS6 tables), and `query` ran any SQL: ``COPY ... TO`` over a
part file rewrote a stored accuracy, ``ATTACH`` created files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_helpers import FIG2, REPO, one_line_error, snapshot

from orchestrator.cli import main
from orchestrator.spec import file_sha256, load_sweep
from orchestrator.store import Store


def evil_folder(root: Path, sweep: str, marker: Path) -> Path:
    """A results folder whose manifest names a .py inside it that creates ``marker`` when
    imported; the manifest even records that file's own hash."""
    d = root / sweep
    d.mkdir(parents=True)
    evil = d / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                    "from orchestrator.spec import Preset, Sweep\n"
                    f"SWEEP = Sweep(name={sweep!r}, axes=dict(inference=['ntk'], arch=['fcn'], "
                    "transform=['identity']), presets=dict(smoke=Preset(config={})))\n")
    Store(str(root), sweep).write_manifest({
        "sweep": sweep, "preset": "smoke", "source": str(evil),
        "source_sha256": file_sha256(evil), "dedupe": True, "only": None,
        "success_train_acc": 0.0, "analysis": {}, "trials": []})
    return evil


# ----------------------------------------------------------------------------- resume
def test_resume_never_imports_the_file_a_results_folder_names(tmp_path, capsys):
    marker = tmp_path / "pwned"
    root = tmp_path / "shared"
    evil_folder(root, "fig2", marker)
    before = snapshot(root)
    assert main(["resume", "fig2", "--results", str(root), "--no-progress"]) == 2
    # the repository's sweeps/fig2.py is not the file this sweep was run from: refused,
    # naming both hashes
    err = one_line_error(capsys, str(FIG2), file_sha256(FIG2),
                         file_sha256(root / "fig2" / "evil.py"), "--force")
    assert "sha256" in err
    assert not marker.exists()
    assert snapshot(root) == before


def test_resume_with_a_changed_sweep_file_is_refused_unless_forced(tmp_path, capsys):
    root = tmp_path / "res"
    sw = load_sweep(FIG2)
    st = Store(str(root), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "source": sw.source,
                       "source_sha256": file_sha256(FIG2), "dedupe": True, "only": None,
                       "trials": [t.to_dict() for t in sw.expand("smoke")]})
    edited = tmp_path / "fig2.py"
    edited.write_text(FIG2.read_text() + "\n# edited after the run\n")
    before = snapshot(root)
    assert main(["resume", "fig2", "--results", str(root), "--sweep-file", str(edited),
                 "--max-failures", "0", "--no-progress"]) == 2
    one_line_error(capsys, str(edited), file_sha256(edited), file_sha256(FIG2), "--force")
    # a manifest without a recorded hash (older symsweep) cannot be checked: refused too
    m = st.read_manifest()
    del m["source_sha256"]
    st.write_manifest(m)
    before = snapshot(root)
    assert main(["resume", "fig2", "--results", str(root), "--no-progress"]) == 2
    one_line_error(capsys, "records no sweep-file hash", "--force")
    assert snapshot(root) == before
    # a sweep name is a name, not a path
    assert main(["resume", "../fig2", "--results", str(root)]) == 2
    one_line_error(capsys, "'../fig2'")


def test_figure_tables_never_import_the_file_a_results_folder_names(tmp_path, capsys):
    """fig4 / figS6 tables read the sweep's analysis defaults: from the repository's sweep
    file, not from the manifest's ``source``."""
    marker = tmp_path / "pwned"
    root = tmp_path / "shared"
    evil_folder(root, "fig4", marker)
    t = load_sweep(REPO / "sweeps" / "fig4.py").expand("smoke")[0]
    c = t.config
    Store(str(root), "fig4").write_attempt(dict(
        trial_id=t.trial_id, attempt=1, preset="smoke", kind=t.kind, arch=c["arch"],
        inference=c["inference"], transform=c["transform"], seed=c["seed"],
        train_size=c["train_size"], status="completed", best_test_acc=0.5, test_acc=0.5,
        test_mse=0.4, train_acc=1.0, config_json=json.dumps(c, sort_keys=True)))
    for cmd in (["table", "fig4"], ["plot", "fig4", "--out", str(tmp_path / "f.png")]):
        main([*cmd, "--results", str(root)])  # one point: a table, or a one-line error
        capsys.readouterr()
        assert not marker.exists()


# ----------------------------------------------------------------------------- query
@pytest.fixture()
def store(tmp_path) -> Path:
    root = tmp_path / "res"
    st = Store(str(root), "fig2")
    st.write_manifest({"sweep": "fig2", "preset": "smoke", "trials": []})
    st.write_attempt(dict(trial_id="t1", attempt=1, preset="smoke", kind="train", arch="vec",
                          inference="nn", transform="identity", seed=0, status="completed",
                          best_test_acc=0.285, test_acc=0.285, train_acc=1.0))
    return root


def part_file(root: Path) -> Path:
    """The store's only trial part file."""
    st = Store(str(root), "fig2")
    (part,) = st.parts()
    return Path(st.trials_dir) / part.name


def stored_acc(root: Path) -> float:
    return float(pq.read_table(part_file(root)).column("best_test_acc")[0].as_py())


@pytest.mark.parametrize("sql,needle", [
    ("COPY (SELECT * REPLACE (0.99 AS best_test_acc) FROM trials) TO '{part}' (FORMAT parquet)",
     "COPY statements are refused"),
    # hidden after a harmless SELECT
    ("select 1; copy (select 0.99 as best_test_acc) to '{part}' (format parquet)",
     "COPY statements are refused"),
    ("ATTACH '{root}/fig2/x.duckdb' AS x", "ATTACH statements are refused"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statements are refused"),
    ("INSTALL httpfs", "statements are refused"),
    ("LOAD httpfs", "statements are refused"),
    ("SET enable_external_access = true", "SET statements are refused"),
])
def test_query_refuses_writes_and_leaves_the_store_unchanged(store, capsys, sql, needle):
    part = part_file(store)
    before = snapshot(store)
    assert main(["query", sql.format(part=part, root=store), "--results", str(store)]) == 2
    one_line_error(capsys, needle, "read-only")
    assert snapshot(store) == before  # no file changed, none created (ATTACH)
    assert stored_acc(store) == 0.285
    assert main(["status", "fig2", "--results", str(store)]) == 0


@pytest.mark.parametrize("sql", [
    "select * from read_csv('{outside}')",
    "select * from read_csv('/etc/hostname')",
    "select * from glob('/*')",
])
def test_query_cannot_read_files_beyond_the_store(store, capsys, sql, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    assert main(["query", sql.format(outside=outside), "--results", str(store)]) == 2
    one_line_error(capsys, "Permission Error", "disabled by configuration")


def test_query_still_reads_the_views(store, capsys):
    assert main(["query", "select best_test_acc from trials", "--results", str(store),
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out == "best_test_acc\n0.285\n"
    assert main(["query", "explain select * from history", "--results", str(store)]) == 0
    capsys.readouterr()
    # the store's own files stay readable (views that read Parquet at query time need it)
    assert main(["query", f"select best_test_acc from read_parquet('{part_file(store)}')",
                 "--results", str(store), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "best_test_acc\n0.285\n"
