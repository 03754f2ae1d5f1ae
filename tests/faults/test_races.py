"""Races between drivers over the driver lock of one sweep (issue 12, races and crashes)."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys

from orchestrator.store import Store
from workers.errors import ConfigError

RACES = 20
DRIVERS = 3


def _context():
    """Contenders start from a fork server, not by forking pytest: by the time this runs the
    test process holds JAX's and Ray's threads, and forking a threaded process can deadlock."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["orchestrator.store"])
    return ctx


def _contender(root: str, start, done, q) -> None:
    start.wait()  # all contenders leave the barrier together
    try:
        _, note = Store(root, "s").acquire_lock()
        q.put(("won", note))
    except ConfigError as ex:
        q.put(("lost", str(ex)))
    except BaseException as ex:  # noqa: BLE001 - reported to the parent, which fails
        q.put(("error", repr(ex)))
    done.wait()  # stay alive until every contender has judged the winner's lock live


def _race(ctx, root: str) -> list[tuple[str, str]]:
    """DRIVERS processes try to take the lock of one sweep at the same instant; returns each
    one's (outcome, message) once all have seen the winner's lock."""
    start, done, q = ctx.Barrier(DRIVERS), ctx.Barrier(DRIVERS + 1), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(root, start, done, q))
             for _ in range(DRIVERS)]
    for p in procs:
        p.start()
    res = [q.get(timeout=120) for _ in procs]
    done.wait(timeout=120)
    for p in procs:
        p.join(timeout=120)
    return res


def test_exactly_one_driver_takes_over_a_stale_lock(tmp_path):
    """Two or more drivers that find the same dead driver's lock: before the fix both could
    delete it and create their own (3 of 40 synchronised races). Real processes, synchronised
    by a barrier, 20 races: exactly one winner each time."""
    ctx = _context()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    outcomes = []
    for i in range(RACES):
        root = str(tmp_path / f"r{i}")
        st = Store(root, "s")
        st.fs.create_dir(st.dir, recursive=True)
        with open(st.lock_path, "w") as f:  # a dead driver's lock, same host
            json.dump({"host": __import__("socket").gethostname(), "pid": dead.pid,
                       "started_at": "2026-01-01T00:00:00+00:00", "heartbeat": 0,
                       "token": "dead"}, f)
        res = _race(ctx, root)
        outcomes.append(res)
        kinds = sorted(r[0] for r in res)
        assert kinds == ["lost"] * (DRIVERS - 1) + ["won"], (i, res)
        note = next(r[1] for r in res if r[0] == "won")
        assert "stale" in note and str(dead.pid) in note
        for kind, msg in res:
            if kind == "lost":
                assert "already running" in msg and "pid" in msg
        lock = st.read_lock()
        assert lock is not None and lock["token"] != "dead"
    assert len(outcomes) == RACES


def test_exactly_one_driver_wins_on_a_fresh_sweep(tmp_path):
    ctx = _context()
    for i in range(5):
        root = str(tmp_path / f"r{i}")
        res = _race(ctx, root)
        assert sorted(r[0] for r in res) == ["lost"] * (DRIVERS - 1) + ["won"], res
        assert next(r[1] for r in res if r[0] == "won") is None
