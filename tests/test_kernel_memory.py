"""Kernel cells in bounded memory: streamed assembly, in-place mirroring, one-copy regression,
memory estimates, and the memory resource a trial requests from Ray."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest

import workers.kernels as K
from orchestrator.layout import ResultsLayout
from orchestrator.resources import memory_requests, tile_task, trial_resources
from orchestrator.spec import Trial
from orchestrator.tiles import TileCache, TileMapper
from workers.kernel_trial import kernel_metrics
from workers.memory import kernel_trial_bytes, param_count, train_trial_bytes
from workers.regression import kernel_fit, kernel_predict

TRIO = ["gap", "lap4", "lap8"]


def _old_kernel_matrices(archs, x1, x2=None, *, depth=2, max_side=None):
    """The assembly before streaming (tile list, all archs, global triu_indices mirror)."""
    archs = K._check_archs(archs)
    symmetric = x2 is None
    x2a = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2a.shape[0]
    tiles = K.plan_tiles(n1, n2, archs=archs, image_shape=x1.shape[1:], symmetric=symmetric,
                         max_side=max_side)
    results = [K.kernel_tile(archs, x1[r0:r1], x2a[c0:c1], depth=depth)
               for r0, r1, c0, c1 in tiles]
    out = {a: {k: np.zeros((n1, n2), np.float32) for k in ("nngp", "ntk")} for a in archs}
    for (r0, r1, c0, c1), res in zip(tiles, results, strict=True):
        for a in archs:
            for k in ("nngp", "ntk"):
                out[a][k][r0:r1, c0:c1] = res[a][k]
                if symmetric and c0 != r0:
                    out[a][k][c0:c1, r0:r1] = res[a][k].T
    if symmetric:
        for a in archs:
            for k in ("nngp", "ntk"):
                iu = np.triu_indices(n1, 1)
                out[a][k][(iu[1], iu[0])] = out[a][k][iu]
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((13, 8, 8, 3)).astype(np.float32),
            rng.standard_normal((6, 8, 8, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def old_trio(images):
    x1, x2 = images
    return {side: (_old_kernel_matrices(TRIO + ["vec"], x1, max_side=side),
                   _old_kernel_matrices(TRIO + ["vec"], x1, x2, max_side=side))
            for side in (4, 5)}


@pytest.mark.parametrize("side", [4, 5])
def test_streamed_assembly_equals_old_exactly_gap_lap_trio(images, old_trio, side):
    x1, x2 = images
    old_sym, old_rect = old_trio[side]
    archs = TRIO + ["vec"]
    for assemble in (None, ["lap4"], ["gap", "vec"]):
        sym = K.kernel_matrices(archs, x1, depth=2, max_side=side, assemble=assemble)
        rect = K.kernel_matrices(archs, x1, x2, depth=2, max_side=side, assemble=assemble)
        assert set(sym) == set(assemble or archs)
        for a in sym:
            for k in ("nngp", "ntk"):
                np.testing.assert_array_equal(sym[a][k], old_sym[a][k])
                np.testing.assert_array_equal(rect[a][k], old_rect[a][k])


@pytest.mark.parametrize("side", [1, 3, 8, 64])
def test_streamed_assembly_equals_old_fcn_several_tile_sides(side):
    rng = np.random.default_rng(side)
    x1 = rng.standard_normal((17, 4, 4, 3)).astype(np.float32)
    x2 = rng.standard_normal((9, 4, 4, 3)).astype(np.float32)
    for xb in (None, x2):
        new = K.kernel_matrix("fcn", x1, xb, depth=3, max_side=side)
        old = _old_kernel_matrices(["fcn"], x1, xb, depth=3, max_side=side)["fcn"]
        for k in ("nngp", "ntk"):
            np.testing.assert_array_equal(new[k], old[k])


def test_every_map_tiles_interface_gives_the_same_matrix(images, tmp_path):
    """TileMapper (on_result), a list-returning map, and one delivering in reverse order."""
    x1, _ = images
    ref = K.kernel_matrices(["fcn", "vec"], x1, depth=2, max_side=4)

    def list_map(fn, kws):
        return [fn(**kw) for kw in kws]

    def reversed_stream(fn, kws, on_result):
        for i in reversed(range(len(kws))):
            on_result(i, fn(**kws[i]))
        return [None] * len(kws)

    mapper = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    for m in (list_map, reversed_stream, mapper, mapper):  # mapper twice: from the cache
        got = K.kernel_matrices(["fcn", "vec"], x1, depth=2, max_side=4, map_tiles=m)
        for a in ref:
            for k in ("nngp", "ntk"):
                np.testing.assert_array_equal(got[a][k], ref[a][k])
    assert mapper.hits == mapper.computed > 0


def test_tile_cache_keeps_every_readout_for_sibling_cells(images, tmp_path):
    """A gap cell assembles only gap, but its tiles (all three readouts) are cached whole, so
    the lap4 cell computes nothing."""
    x1, _ = images
    first = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    K.kernel_matrices(TRIO, x1, depth=2, max_side=5, map_tiles=first, assemble=["gap"])
    second = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    lap4 = K.kernel_matrices(TRIO, x1, depth=2, max_side=5, map_tiles=second,
                             assemble=["lap4"])
    assert second.computed == 0 and second.hits == first.computed
    np.testing.assert_array_equal(lap4["lap4"]["ntk"],
                                  K.kernel_matrices(TRIO, x1, depth=2, max_side=5)["lap4"]["ntk"])


def test_assemble_must_be_a_subset():
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(K.ConfigError):
        K.kernel_matrices(["gap"], x, assemble=["lap4"])


def test_diagonal_mirroring_in_place_and_exactly_symmetric():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((7, 7))
    big = np.zeros((10, 10))
    big[2:9, 2:9] = m
    K._mirror_diagonal_block(big[2:9, 2:9])
    blk = big[2:9, 2:9]
    np.testing.assert_array_equal(blk, blk.T)
    np.testing.assert_array_equal(np.triu(blk), np.triu(m))  # upper triangle kept
    assert not big[:2].any() and not big[9:].any()           # nothing outside the block
    x = rng.standard_normal((23, 4, 4, 3)).astype(np.float32)
    for side in (4, 8, 23):
        k = K.kernel_matrix("vec", x, depth=2, max_side=side)
        for kind in ("nngp", "ntk"):
            np.testing.assert_array_equal(k[kind], k[kind].T)


def _spd(n, rng, dtype=np.float32):
    a = rng.standard_normal((n, n // 2))
    return (a @ a.T / n + 0.05 * np.eye(n)).astype(dtype)


def test_one_copy_regression_matches_direct_solve():
    rng = np.random.default_rng(1)
    n = 300
    kxx = _spd(n, rng)
    ksx = rng.standard_normal((40, n)).astype(np.float32)
    y = rng.standard_normal((n, 10))
    reg = 1e-4
    k64 = kxx.astype(np.float64)
    a = 0.5 * (k64 + k64.T) + reg * np.mean(np.diag(k64)) * np.eye(n)
    direct = ksx.astype(np.float64) @ np.linalg.solve(a, y)
    got = kernel_predict(kxx, ksx, y, diag_reg=reg)
    rel = np.max(np.abs(got - direct)) / np.max(np.abs(direct))
    assert rel < 1e-9, rel
    # a non-symmetric input is symmetrised as (K + K^T) / 2, as before
    noisy = kxx + rng.standard_normal((n, n)).astype(np.float32) * 1e-4
    k64 = noisy.astype(np.float64)
    a = 0.5 * (k64 + k64.T) + reg * np.mean(np.diag(k64)) * np.eye(n)
    direct = ksx.astype(np.float64) @ np.linalg.solve(a, y)
    got = kernel_predict(noisy, ksx, y, diag_reg=reg)
    assert np.max(np.abs(got - direct)) / np.max(np.abs(direct)) < 1e-8


def test_regression_allocates_one_float64_copy():
    rng = np.random.default_rng(2)
    n = 1200
    kxx = _spd(n, rng)
    y = rng.standard_normal((n, 10))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kernel_fit(kxx, y, diag_reg=1e-4)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    one_copy = 8 * n * n
    # one float64 N x N copy plus O(1024 x N) blocks; the old path held four N x N float64
    assert one_copy <= peak < 1.25 * one_copy + 3 * 8 * 1024 * n, peak / one_copy


def test_kernel_estimate_monotone_and_matches_tracemalloc():
    def peak(n, v, m, **kw):
        return kernel_trial_bytes(n, v, m, arch="fcn", image_shape=(8, 8, 3), **kw)["peak"]

    assert peak(100, 10, 20) < peak(200, 10, 20) < peak(400, 10, 20)
    assert peak(200, 10, 20) < peak(200, 50, 20) < peak(200, 50, 80)
    assert peak(200, 10, 20) < peak(200, 10, 20, itemsize=8)
    paper = kernel_trial_bytes(45_000, 5_000, 10_000, arch="gap")
    assert paper["matrices"] == 2 * 45_000 * 60_000 * 4          # 21.6 GB: gap only
    assert 35e9 < paper["peak"] < 50e9

    # measured: matrices + both regressions of a small fcn cell, against the estimate's
    # matrices + solve terms (the process, images and XLA's tile buffers are not traced)
    rng = np.random.default_rng(0)
    n, v, m = 600, 60, 120
    x = rng.standard_normal((n + v + m, 8, 8, 3)).astype(np.float32)
    y = np.eye(10)[rng.integers(0, 10, n + v + m)] - 0.1
    lab = np.argmax(y, 1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    xt, xs, xv = x[:n], x[n:n + m], x[n + m:]
    k_tr = K.kernel_matrix("fcn", xt, depth=2, max_side=128)
    k_te = K.kernel_matrix("fcn", xs, xt, depth=2, max_side=128)
    k_va = K.kernel_matrix("fcn", xv, xt, depth=2, max_side=128)
    kernel_metrics(k_tr, k_te, y[:n], y[n:n + m], lab[:n], lab[n:n + m], k_val=k_va,
                   y_val=y[n + m:], labels_val=lab[n + m:], diag_reg=1e-3)
    measured = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    est = kernel_trial_bytes(n, v, m, arch="fcn", image_shape=(8, 8, 3))
    predicted = est["matrices"] + est["solve"]
    assert 0.5 < measured / predicted < 2.0, (measured, predicted)


@pytest.mark.parametrize("arch", ["fcn", "lcn", "vec", "gap", "lap4", "lap8"])
def test_param_count_matches_the_model(arch):
    from workers.models import count_params, init_params, make_model

    for depth in (0, 2):
        model = make_model(arch, 5, depth=depth)
        assert param_count(arch, 5, depth, (8, 8, 3)) == count_params(
            init_params(model, (0, 0), (8, 8, 3)))


def test_train_estimate_monotone():
    def peak(**kw):
        base = dict(arch="gap", width=16, depth=4, n_train=1000, n_val=100, n_test=200)
        return train_trial_bytes(**{**base, **kw})["peak"]

    assert peak() < peak(width=32) < peak(width=64)
    assert peak(batch_size=8, eta0_given=True) < peak(batch_size=400, eta0_given=True)
    assert peak(n_train=1000) < peak(n_train=5000)
    assert peak(eta0_given=True) <= peak()


def _trial(kind, arch, **res):
    cfg = {"arch": arch, "inference": "ntk" if kind == "kernel" else "nn", "depth": 2,
           "dataset": "synthetic", "train_size": 100, "val_size": 10, "test_size": 20,
           "image_size": 8, "width": 8}
    return Trial(f"{kind}-{arch}", kind, cfg, {"cpu": 1.0, "gpu": 0.0, "tile_cpu": 1.0,
                                               "tile_gpu": 0.0, **res})


def test_ray_resource_request_contains_memory(caplog):
    trials = [_trial("kernel", "gap"), _trial("train", "vec"), _trial("kernel", "fcn",
                                                                       tile_gpu=1.0)]
    dicts = memory_requests(trials, node_memory=64e9)
    for d in dicts:
        assert d["resources"]["memory"] > 0
        pgf = trial_resources({"trial": d})
        assert pgf.bundles[0]["memory"] == d["resources"]["memory"]
    # GPU tiles run outside the trial's placement group: it holds only its CPU and memory
    assert trial_resources({"trial": dicts[2]}).bundles == [
        {"CPU": 1.0, "memory": dicts[2]["resources"]["memory"]}]
    assert tile_task(dicts[2]) == {"CPU": 1.0, "GPU": 1.0} and tile_task(dicts[0]) is None
    # a preset's own value wins; a request above the largest node is capped, loudly
    over = memory_requests([_trial("train", "vec", memory=5e9)], node_memory=64e9)
    assert over[0]["resources"]["memory"] == 5e9
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        capped = memory_requests([_trial("kernel", "gap")], node_memory=1e8)
    assert capped[0]["resources"]["memory"] == 1e8
    assert "more than the largest Ray node" in caplog.text


def test_plan_prices_one_propagation_per_gap_lap_group_and_prints_memory():
    from orchestrator.plan import Unit, format_plans, kernel_key, make_plan, train_key
    from orchestrator.spec import load_sweep

    sweep = load_sweep("sweeps/fig2.py")
    only = {"transform": ["identity", "permutation"]}
    trials = [t for t in sweep.expand("smoke") if t.config["transform"] in only["transform"]]
    units = {}
    for t in trials:
        if t.kind == "kernel":
            units[kernel_key(t.config)] = Unit(kernel_key(t.config), "kernel", pair_s=1e-3,
                                               tile_side=8, solve_s=0.1, solve_n=100)
        else:
            units[train_key(t.config)] = Unit(train_key(t.config), "train", step_s=1e-3,
                                              fwd_s_per_image=1e-5, matvec_s=1e-3)
    # gap, lap4 and lap8 are one unit: the three readouts of one propagation
    assert len({k for k in units if k[0] == "kernel" and "gap" in k[1]}) == 1
    plan = make_plan(sweep, "smoke", only=only, units=units)
    kern = [c for c in plan.costs if c.kind == "kernel" and not c.derived]
    for transform in only["transform"]:
        trio = [c for c, t in zip(plan.costs, [t for t in trials], strict=True)
                if c.kind == "kernel" and c.arch in TRIO and not c.derived
                and t.config["transform"] == transform]
        paying = [c for c in trio if c.gpu_s > 0]
        assert len(paying) == 1 and paying[0].arch == "gap"      # priced once, at gap
        assert all(c.cpu_s > 0 for c in trio)                     # every cell still solves
    assert all(c.mem_bytes > 0 for c in plan.costs if not c.derived)
    text = format_plans([plan])
    assert "peak mem/trial" in text and "kernel propagations priced" in text
    assert sum(1 for c in kern if c.detail.get("shared")) == 4
