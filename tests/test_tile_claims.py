"""Tile claims (orchestrator/tile_claims.py): one holder per tile, dead and hung holders taken
over by exactly one mapper, a released claim never written back."""

from __future__ import annotations

import json
import os
import socket
import time

import pyarrow.fs as pafs
import pytest

from orchestrator.spec import Preset, Sweep
from orchestrator.tile_claims import STALE_S, TileClaims
from workers.errors import ConfigError


def _claims(tmp_path) -> TileClaims:
    return TileClaims(pafs.LocalFileSystem(), str(tmp_path / "tiles"))


def _left(tmp_path, key: str, **rec) -> None:
    (tmp_path / "tiles").mkdir(exist_ok=True)
    (tmp_path / "tiles" / f"{key}.claim").write_text(json.dumps(rec))


def test_one_holder_and_a_released_claim_is_free_again(tmp_path):
    a, b = _claims(tmp_path), _claims(tmp_path)
    assert a.claim("k") and not b.claim("k") and a.claim("k")  # its own: still True
    assert json.loads((tmp_path / "tiles" / "k.claim").read_text())["token"] == a.token
    a.release("k")
    assert b.claim("k") and not a.claim("k")
    assert not list((tmp_path / "tiles").glob("*.tmp"))  # the record files are removed


def test_dead_and_hung_holders_are_taken_over_a_live_one_is_not(tmp_path):
    me = socket.gethostname()
    c = _claims(tmp_path)
    _left(tmp_path, "dead", host=me, pid=2 ** 22 + 99, token="d", heartbeat=time.time())
    _left(tmp_path, "hung", host=me, pid=os.getpid(), token="h",
          heartbeat=time.time() - STALE_S - 1)  # alive, but no heartbeat for STALE_S
    _left(tmp_path, "live", host=me, pid=os.getpid(), token="l", heartbeat=time.time())
    _left(tmp_path, "far", host="elsewhere", pid=1, token="f", heartbeat=time.time())
    assert c.claim("dead") and c.claim("hung") and c.taken_over == 2
    assert not c.claim("live") and not c.claim("far")


def test_only_the_mapper_that_marks_a_takeover_takes_the_claim(tmp_path):
    """Two mappers finding one dead claim: the first creates the takeover mark for that
    holder's token; the second, seeing the mark, waits (it would otherwise delete the
    winner's fresh claim and both would hold the tile)."""
    me = socket.gethostname()
    _left(tmp_path, "k", host=me, pid=2 ** 22 + 98, token="dead", heartbeat=time.time())
    b, c = _claims(tmp_path), _claims(tmp_path)
    (tmp_path / "tiles" / "k.claim.takeover-dead").write_text("{}")  # b's takeover under way
    assert not c.claim("k")
    (tmp_path / "tiles" / "k.claim.takeover-dead").unlink()
    assert b.claim("k") and not c.claim("k") and b.taken_over == 1
    assert not list((tmp_path / "tiles").glob("*takeover*"))


def test_a_claim_released_is_not_written_back_by_the_next_refresh(tmp_path):
    a = _claims(tmp_path)
    assert a.claim("k")
    a.release("k")
    a.refresh(force=True)
    assert not (tmp_path / "tiles" / "k.claim").exists() and a.mine == set()


@pytest.mark.parametrize("res, says", [
    (dict(cpu=1, tile_gpu=1, tile_cpu=1), "tile_cpu must be 0 when tile_gpu > 0"),
    (dict(cpu=1, tile_gpu=1, tile_inflight=0), "tile_inflight: expected a whole number >= 1"),
    (dict(cpu=1, tile_gpu=1, tile_inflight=2.5), "tile_inflight: expected a whole number"),
    (dict(cpu=1, tile_gpu=1, tile_inflight=float("inf")), "expected a finite number >= 0"),
])
def test_gpu_tile_resources_that_could_hang_or_break_are_refused(res, says):
    with pytest.raises(ConfigError, match=says):
        Sweep(name="x", axes=dict(inference=["nngp"], arch=["gap"], transform=["identity"]),
              presets=dict(smoke=Preset(config={}, resources=dict(kernel=res))))


def test_gpu_tiles_reserve_no_cpu_by_default():
    """A preset that names tile_gpu but not tile_cpu gets tile_cpu 0: a GPU tile that asked
    for a CPU outside its trial's bundle could wait for ever once the cells hold every CPU."""
    sw = Sweep(name="x", axes=dict(inference=["nngp"], arch=["gap"], transform=["identity"]),
               presets=dict(smoke=Preset(config=dict(dataset="synthetic"), resources=dict(
                   kernel=dict(cpu=1, tile_gpu=1, tile_inflight=4)))))
    (t,) = sw.expand("smoke")
    assert t.resources["tile_cpu"] == 0 and t.resources["tile_inflight"] == 4
