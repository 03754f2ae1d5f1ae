"""Kernel tiles over the cluster (issue 23, items 1, 2 and 4), on one machine with logical GPUs.

A kernel cell's GPU tiles are Ray tasks outside the trial's placement group (which holds only
the trial's CPU and memory), up to ``tile_inflight`` at once, so one cell spreads over every
free GPU; the cell's images are put in the object store once per block instead of once per
tile; and the tile plan, hence every tile's cache key, does not depend on the memory of the
device that plans it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from orchestrator.layout import ResultsLayout
from orchestrator.tiles import TileCache, TileMapper, tile_key
from workers.devices import CPU_REHEARSAL

GPUS = 3


@pytest.fixture(scope="module")
def ray_gpus():
    """A Ray of this machine declaring 3 logical GPUs (Ray schedules by the count; each task
    sees its own CUDA_VISIBLE_DEVICES) and 4 logical CPUs."""
    import ray

    ray.init(num_cpus=4, num_gpus=GPUS, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu",
                                                    CPU_REHEARSAL: "1"}})
    yield
    ray.shutdown()


def _row_sums_tile(meet_dir: str, meet: int):
    """A tile function (shipped by value: defined here) that waits until ``meet`` tiles are
    running at once (a rendezvous through files, up to 120 s), then returns the outer product
    of row sums with where it ran."""
    def tile(x_rows, x_cols):
        import ray

        me = f"{meet_dir}/{os.getpid()}-{time.monotonic_ns()}"
        open(me, "w").close()
        t_end = time.monotonic() + 120
        while len(os.listdir(meet_dir)) < meet and time.monotonic() < t_end:
            time.sleep(0.05)
        seen = len(os.listdir(meet_dir))
        return {"k": np.outer(x_rows.sum(axis=(1, 2, 3)), x_cols.sum(axis=(1, 2, 3))),
                "seen": np.asarray(seen),
                "gpu": np.asarray(int(os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))),
                "pg": np.asarray(str(ray.get_runtime_context().get_placement_group_id()))}
    return tile


def test_gpu_tiles_leave_the_trials_placement_group_and_use_every_gpu(ray_gpus, tmp_path):
    """A trial as Tune starts it (a task in a placement group that captures its children,
    holding one CPU) maps GPU tiles: they run outside its placement group, three at once on
    the three GPUs (the rendezvous would wait 120 s and report fewer otherwise), and every
    result is in the cache when the map returns."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    meet = tmp_path / "meet"
    meet.mkdir()
    tile = _row_sums_tile(str(meet), GPUS)
    x = np.random.default_rng(0).random((12, 4, 4, 3), np.float32)
    kws = [dict(x_rows=x[r:r + 4], x_cols=x) for r in (0, 4, 8)]

    @ray.remote
    def trial(cache_dir: str):
        m = TileMapper(TileCache(ResultsLayout(cache_dir)), inflight=GPUS, num_gpus=1, num_cpus=0)
        return m(tile, kws), m.computed, ray.get_runtime_context().get_placement_group_id()

    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready())
    try:
        out, computed, trial_pg = ray.get(trial.options(
            num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True)).remote(str(tmp_path)))
    finally:
        remove_placement_group(pg)
    assert trial_pg is not None and computed == 3
    assert [str(o["pg"]) for o in out] == ["None"] * 3  # not the trial's placement group
    assert sorted(int(o["gpu"]) for o in out) == list(range(GPUS))  # one tile per GPU
    assert all(int(o["seen"]) >= GPUS for o in out)  # all three ran at the same time
    for kw, o in zip(kws, out, strict=True):
        np.testing.assert_allclose(o["k"], np.outer(kw["x_rows"].sum(axis=(1, 2, 3)),
                                                    x.sum(axis=(1, 2, 3))), rtol=1e-6)
    assert len(list((tmp_path / "tiles").glob("*.npz"))) == 3  # each stored by the trial


def test_each_block_of_rows_is_put_once_and_a_tiles_own_inputs_only_while_it_runs(
        ray_gpus, tmp_path, monkeypatch):
    """16 off-diagonal tiles slice two image blocks (x1, x2): the object store gets each
    block once (2 puts, the blocks' bytes), not one slice per tile argument (32 puts); a
    tile's own large argument is put once per tile and counted as a tile in flight."""
    import ray

    def tile(x_rows, x_cols, w):
        return np.outer(x_rows.sum(axis=(1, 2, 3)), x_cols.sum(axis=(1, 2, 3))) * w.sum()

    rng = np.random.default_rng(1)
    x1 = rng.random((256, 8, 8, 3), np.float32)  # 196 KB: through the object store
    x2 = rng.random((256, 8, 8, 3), np.float32)
    w = np.ones(40_000)  # 320 KB, not a slice: this tile's own
    kws = [dict(x_rows=x1[r:r + 64], x_cols=x2[c:c + 64], w=w)
           for r in range(0, 256, 64) for c in range(0, 256, 64)]
    puts: list[int] = []
    real_put = ray.put

    def counting_put(value, *a, **k):
        puts.append(int(getattr(value, "nbytes", 0)))
        return real_put(value, *a, **k)

    monkeypatch.setattr(ray, "put", counting_put)
    m = TileMapper(TileCache(ResultsLayout(str(tmp_path))), inflight=2, num_gpus=1, num_cpus=0)
    out = m(tile, kws)
    assert sorted(puts[:2]) == [x1.nbytes, x2.nbytes]  # the two blocks, once each
    assert puts[2:] == [w.nbytes] * 16  # then one own input per tile
    assert m.stats["blocks"] == 2 and m.stats["peak_tile_bytes"] == w.nbytes
    assert m.stats["put_bytes"] == x1.nbytes + x2.nbytes + 16 * w.nbytes
    # each GPU tile checked and named the devices it computed on (CPU here: the rehearsal)
    (dev, n), = m.stats["devices"].items()
    assert dev.startswith("cpu ") and n == 16
    for kw, o in zip(kws, out, strict=True):
        np.testing.assert_allclose(o, tile(**kw), rtol=1e-6)
    # a tile that reads only a part of a block: the block put is only the rows used
    puts.clear()
    m2 = TileMapper(None, inflight=2, num_gpus=1, num_cpus=0)
    part = m2(tile, [dict(x_rows=x1[32:96], x_cols=x1[160:224], w=w)])
    np.testing.assert_allclose(part[0], tile(x1[32:96], x1[160:224], w), rtol=1e-6)
    assert puts[0] == x1[32:224].nbytes


def test_the_tile_plan_and_keys_do_not_depend_on_the_devices_memory(monkeypatch):
    """The tiles of a cell (and so their cache keys) come from its config (tile_memory_bytes,
    tile_side), never from the memory the planning process's device reports: two very
    different work-item sizes (what a device's free memory sets) give the same keys."""
    import workers.kernels as kernels

    x = np.random.default_rng(2).random((20, 4, 4, 3), np.float32)
    keys = {}
    for entries in (2 ** 10, 2 ** 22):
        monkeypatch.setattr(kernels, "item_entries", lambda itemsize=8, e=entries: e)
        seen: list[str] = []

        def record(fn, kwargs_list, seen=seen):
            seen.extend(tile_key(fn, kw) for kw in kwargs_list)
            return [fn(**kw) for kw in kwargs_list]

        kernels.kernel_matrices(["gap", "vec"], x, depth=2, map_tiles=record, max_side=8)
        keys[entries] = seen
    assert len(keys[2 ** 10]) == 6 and keys[2 ** 10] == keys[2 ** 22]


def _counting_tile(meet_dir: str, log_dir: str):
    """A tile function that logs each computation (one file per call, named by its tile) and
    runs long enough (0.5 s) that two cells started together overlap."""
    def tile(x_rows, x_cols):
        tid = int(x_rows[0, 0, 0, 0] * 1e6)
        open(f"{log_dir}/{tid}-{os.getpid()}-{time.monotonic_ns()}", "w").close()
        time.sleep(0.5)
        return {"k": np.outer(x_rows.sum(axis=(1, 2, 3)), x_cols.sum(axis=(1, 2, 3)))}
    return tile


def test_cells_that_start_together_compute_each_shared_tile_once(ray_gpus, tmp_path):
    """gap, lap4 and lap8 of one transform share every tile; started together (a rendezvous
    before their maps), two such cells split the tiles between them through claims: each
    tile is computed once, the other cell waits for it and reads it from the cache, and both
    end with the same, complete results."""
    import ray

    meet, logs = tmp_path / "meet", tmp_path / "log"
    meet.mkdir()
    logs.mkdir()
    tile = _counting_tile(str(meet), str(logs))
    x = np.random.default_rng(3).random((16, 4, 4, 3), np.float32)
    kws = [dict(x_rows=x[r:r + 2], x_cols=x) for r in range(0, 16, 2)]  # 8 tiles

    @ray.remote
    def cell(name: str, cache_dir: str):
        open(f"{meet}/{name}", "w").close()
        while len(os.listdir(meet)) < 2:  # both cells start their maps together
            time.sleep(0.02)
        m = TileMapper(TileCache(ResultsLayout(cache_dir)), inflight=2, num_gpus=1, num_cpus=0)
        return m(tile, kws), m.computed, m.stats.get("waited", 0)

    (a, ca, wa), (b, cb, wb) = ray.get([cell.options(num_cpus=1).remote(n, str(tmp_path))
                                        for n in ("gap", "lap4")])
    computed = sorted(int(p.name.split("-")[0]) for p in logs.iterdir())
    assert len(computed) == 8 and len(set(computed)) == 8  # every tile once, none twice
    assert ca + cb == 8 and wa + wb == 8 and ca > 0 and cb > 0  # the work was shared
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra["k"], rb["k"])
    assert not list((tmp_path / "tiles").glob("*.claim"))  # every claim released


def test_a_dead_holders_claim_is_taken_over_and_a_released_one_too(ray_gpus, tmp_path,
                                                                    monkeypatch):
    """A claim whose holder died (its pid on this host has ended) is taken over at once; a
    claim of a live holder is waited on, and once released without a result (its holder
    failed or was stopped) the waiting cell computes the tile itself: none is lost."""
    import socket
    import threading

    logs = tmp_path / "log"
    logs.mkdir()
    tile = _counting_tile(str(tmp_path), str(logs))
    x = np.random.default_rng(4).random((4, 4, 4, 3), np.float32)
    kws = [dict(x_rows=x[0:2], x_cols=x), dict(x_rows=x[2:4], x_cols=x)]
    keys = [tile_key(tile, kw) for kw in kws]
    (tmp_path / "tiles").mkdir()
    host = socket.gethostname()
    (tmp_path / "tiles" / f"{keys[0]}.claim").write_text(
        f'{{"host": "{host}", "pid": {2 ** 22 + 4321}, "token": "dead", "heartbeat": 0}}')
    live = tmp_path / "tiles" / f"{keys[1]}.claim"
    live.write_text(f'{{"host": "{host}", "pid": {os.getpid()}, "token": "live", '
                    f'"heartbeat": {time.time()}}}')
    threading.Timer(3.0, live.unlink).start()  # the live holder gives up its tile
    import orchestrator.tiles as tiles_mod

    monkeypatch.setattr(tiles_mod, "WAIT_LOOK_MAX", 1)  # looked at in turn, one per poll
    m = TileMapper(TileCache(ResultsLayout(str(tmp_path))), inflight=2, num_gpus=1, num_cpus=0)
    out = m(tile, kws)
    assert m.computed == 2 and m.stats["claims_taken_over"] == 1
    assert len(list(logs.iterdir())) == 2
    for kw, o in zip(kws, out, strict=True):
        np.testing.assert_allclose(o["k"], np.outer(kw["x_rows"].sum(axis=(1, 2, 3)),
                                                    x.sum(axis=(1, 2, 3))), rtol=1e-6)
    assert not list((tmp_path / "tiles").glob("*.claim"))


def test_a_cell_never_runs_more_tiles_at_once_than_the_planner_assumes(ray_gpus, tmp_path):
    """The planner cuts a kernel cell into min(tiles, tile_inflight, GPUs) parts
    (plan.model.wall_time); the runner's mapper keeps at most tile_inflight of the cell's tiles
    in flight, whatever GPUs are free (here 3 GPUs, tile_inflight 2, 6 tiles: each tile counts
    the tiles running when it starts)."""
    from orchestrator.plan.model import Unit, kernel_key, trial_cost
    from orchestrator.spec import Trial

    run = tmp_path / "running"
    run.mkdir()

    def tile(x_rows, x_cols):
        me = run / f"{os.getpid()}-{time.monotonic_ns()}"
        me.touch()
        seen = len(list(run.iterdir()))
        time.sleep(0.3)
        me.unlink()
        return np.asarray(seen)

    x = np.ones((12, 4, 4, 3), np.float32)
    m = TileMapper(None, inflight=2, num_gpus=1, num_cpus=0)
    seen = m(tile, [dict(x_rows=x[r:r + 2], x_cols=x) for r in range(0, 12, 2)])
    assert max(int(s) for s in seen) <= 2 and m.computed == 6
    cfg = dict(dataset="synthetic", image_size=4, train_size=12, val_size=0, test_size=4,
               depth=2, inference="nngp", arch="gap", transform="identity", seed=0)
    t = Trial("k", "kernel", cfg, {"cpu": 1, "tile_gpu": 1, "tile_cpu": 0, "tile_inflight": 2})
    u = Unit(kernel_key(cfg), "kernel", pair_s=1e-3, solve_s=0.0, solve_n=1)
    assert trial_cost(t, {u.key: u}).spread == 2  # the same bound, read from the trial
