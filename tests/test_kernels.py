"""Numerical pieces and tiling of workers.kernels: arc-cosine, ReLU step, tiles, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workers import kernels as K
from workers.errors import ConfigError, DataError


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-13)])
def test_acos_matches_numpy(dtype, tol):
    x = np.concatenate([np.linspace(-1, 1, 200_001), 1 - np.logspace(-7, -1, 500),
                        -1 + np.logspace(-7, -1, 500)]).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        got = np.asarray(K.acos(jnp.asarray(x)), np.float64)
    ref = np.arccos(x.astype(np.float64))  # exact arccos of the rounded input
    ok = ref > 0
    assert np.max(np.abs(got[ok] - ref[ok]) / ref[ok]) < tol
    assert got[x == 1][0] == 0.0


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_relu_step_matches_closed_form(dtype, tol):
    """relu_kernels vs the arc-cosine formulas evaluated with np.arccos in float64."""
    rng = np.random.default_rng(0)
    s1 = rng.uniform(0.2, 3.0, 5000)
    s2 = rng.uniform(0.2, 3.0, 5000)
    rho = np.concatenate([rng.uniform(-1, 1, 4000), 1 - np.logspace(-6, -1, 500),
                          -1 + np.logspace(-6, -1, 500)])
    k = rho * s1 * s2
    t = rng.uniform(0.5, 2.0, 5000)
    args = [a.astype(dtype) for a in (k, t, s1, s2)]
    with jax.enable_x64(dtype == np.float64):
        kn, tn = (np.asarray(a, np.float64) for a in K.relu_kernels(*map(jnp.asarray, args), None))
    k64, t64, s164, s264 = (a.astype(np.float64) for a in args)
    r = np.clip(k64 / (s164 * s264), -1, 1)
    th = np.arccos(r)
    ref_k = s164 * s264 * (np.sin(th) + (np.pi - th) * r) / (2 * np.pi)
    ref_t = t64 * (np.pi - th) / (2 * np.pi)
    # absolute error relative to the scale s1 s2 (entries near rho = -1 are ~0)
    assert np.max(np.abs(kn - ref_k) / (s164 * s264)) < tol
    # t carries the arc-cosine's conditioning near |rho| = 1: rounding of rho in the input dtype
    # moves theta by ~eps / sin(theta), which the float64 reference does not see.
    eps = np.finfo(dtype).eps
    cond = 8 * eps / (np.sqrt(np.maximum(1 - r**2, eps)) * np.maximum(np.pi - th, np.sqrt(eps)))
    assert np.all(np.abs(tn - ref_t) / t64 < tol + cond)
    assert np.max(np.abs(tn - ref_t) / t64) < 1e-4
    # known values: rho = 0 -> 1/(2 pi) s1 s2 and t/4... ; rho = 1 -> s1 s2 / 2 and t / 2
    kk, tt = K.relu_kernels(jnp.array([0.0, 4.0]), jnp.array([1.0, 1.0]),
                            jnp.array([2.0, 2.0]), jnp.array([2.0, 2.0]), None)
    np.testing.assert_allclose(np.asarray(kk), [4 / (2 * math.pi), 2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tt), [0.25, 0.5], rtol=1e-6)


def test_readout_weights_match_explicit_pooling():
    """The offset-layout readouts equal pooling written out on a full (HW x HW) covariance."""
    rng = np.random.default_rng(1)
    h, w = 8, 4
    cov = rng.standard_normal((h, w, h, w))
    idx = K._offset_index(h, w)
    flat = cov.reshape(h * w, h * w)
    t = flat[np.arange(h * w)[:, None], idx].reshape(h, w, h * w)  # T[a, d] = K[a, a + d]
    pooled4 = cov.reshape(2, 4, 1, 4, 2, 4, 1, 4).mean(axis=(1, 3, 5, 7))  # (2,1,2,1)
    expect = {
        "vec": np.mean(np.diagonal(flat)),
        "gap": np.mean(cov),
        "lap4": np.mean([pooled4[i, 0, i, 0] for i in range(2)]),
    }
    for arch, val in expect.items():
        assert np.sum(K.readout_weights(arch, h, w) * t) == pytest.approx(val, rel=1e-12)
    with pytest.raises(ConfigError, match="lap8 needs images"):
        K.readout_weights("lap8", h, w)


@pytest.mark.parametrize("symmetric", [True, False])
def test_plan_tiles_cover_once(symmetric):
    n1, n2 = 37, 37 if symmetric else 23
    tiles = K.plan_tiles(n1, n2, archs=["gap"], image_shape=(8, 8, 3), memory_bytes=2**30,
                         symmetric=symmetric, max_side=10)
    count = np.zeros((n1, n2), int)
    for r0, r1, c0, c1 in tiles:
        assert r1 - r0 <= 10 and c1 - c0 <= 10
        count[r0:r1, c0:c1] += 1
        if symmetric:
            assert c0 >= r0
            if c0 != r0:  # mirrored into the lower triangle, as kernel_matrices does
                count[c0:c1, r0:r1] += 1
    np.testing.assert_array_equal(count, 1)


def test_plan_tiles_respects_memory_budget():
    for archs in (["fcn"], ["vec"], ["gap", "lap4", "vec"]):
        budget = 64 * 2**20
        tiles = K.plan_tiles(3000, 3000, archs=archs, image_shape=(32, 32, 3),
                             memory_bytes=budget)
        r0, r1, c0, c1 = tiles[0]
        assert K.tile_bytes(r1 - r0, c1 - c0, archs=archs, image_shape=(32, 32, 3)) <= budget
        big = K.plan_tiles(3000, 3000, archs=archs, image_shape=(32, 32, 3),
                           memory_bytes=16 * 2**30)
        assert len(big) <= len(tiles)
    with pytest.raises(ConfigError, match="raise memory_bytes"):
        K.plan_tiles(10, 10, archs=["gap"], image_shape=(32, 32, 3), memory_bytes=1000)


# float32 kernels computed in tiles of other shapes sum in another order: they agree to a
# few tens of ulps (1.2e-7 each), and how many depends on the CPU's vector width (2.5e-6 was
# seen on an AMD EPYC where 2e-6 had held elsewhere); 1e-5 is ~80 ulps
TILE_RTOL = 1e-5


def test_tiled_matrix_equals_one_tile_and_map_tiles_hook():
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((11, 8, 8, 3)).astype(np.float32)
    x2 = rng.standard_normal((7, 8, 8, 3)).astype(np.float32)
    archs = ["fcn", "vec", "gap", "lap4"]
    whole = K.kernel_tile(archs, x1, x1, depth=2)
    seen = []

    def my_map(fn, kwargs_list):
        seen.extend(kwargs_list)
        return [fn(**kw) for kw in kwargs_list]

    budget = K.tile_bytes(4, 4, archs=archs, image_shape=(8, 8, 3))
    tiled = K.kernel_matrices(archs, x1, depth=2, memory_bytes=budget, map_tiles=my_map)
    n_side = math.ceil(11 / len(seen[0]["x_rows"]))
    assert len(seen) == n_side * (n_side + 1) // 2  # upper triangle only
    for a in archs:
        for k in ("nngp", "ntk"):
            np.testing.assert_allclose(tiled[a][k], whole[a][k], rtol=TILE_RTOL)
            np.testing.assert_array_equal(tiled[a][k], tiled[a][k].T)
    cross = K.kernel_matrices(archs, x1, x2, depth=2, memory_bytes=budget)
    single = K.kernel_tile(archs, x1, x2, depth=2)
    for a in archs:
        np.testing.assert_allclose(cross[a]["ntk"], single[a]["ntk"], rtol=TILE_RTOL)
    km = K.kernel_matrix("vec", x1, x2, depth=2)
    np.testing.assert_allclose(km["nngp"], single["vec"]["nngp"], rtol=TILE_RTOL)


def test_depth_zero_is_the_input_kernel_readout():
    """depth 0: readout of the input covariance, w_var * mean_a x[a].x'[a] / C + b_var."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 4, 3))
    r = K.kernel_tile(["vec", "fcn", "gap"], x, x, depth=0, w_var=1.5, b_var=0.2,
                      dtype=np.float64)
    lin = 1.5 * x.reshape(3, -1) @ x.reshape(3, -1).T / 48 + 0.2
    np.testing.assert_allclose(r["vec"]["nngp"], lin, rtol=1e-12)
    np.testing.assert_allclose(r["fcn"]["nngp"], lin, rtol=1e-12)
    np.testing.assert_allclose(r["fcn"]["ntk"], lin, rtol=1e-12)  # one dense layer: NTK = NNGP
    means = x.mean(axis=(1, 2))
    np.testing.assert_allclose(r["gap"]["nngp"], 1.5 * means @ means.T / 3 + 0.2, rtol=1e-12)


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 4, 4, 3))
    with pytest.raises(ConfigError, match="unknown arch"):
        K.kernel_matrix("resnet", x)
    with pytest.raises(DataError, match="shape"):
        K.kernel_matrix("vec", np.zeros((2, 16)))
    with pytest.raises(DataError, match="NaN"):
        K.kernel_matrix("vec", np.full((2, 4, 4, 3), np.nan))
    with pytest.raises(DataError, match="differ in image shape"):
        K.kernel_matrix("vec", x, np.zeros((2, 4, 5, 3)))
    with pytest.raises(ConfigError, match="dtype"):
        K.kernel_matrix("vec", x, dtype=np.float16)


@pytest.mark.parametrize("archs", [["fcn"], ["vec"], ["gap", "lap4", "vec"]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_threads_do_not_change_the_result(archs, dtype):
    """A tile split over host threads (column parts) equals the one-thread tile: each column
    part runs the same per-column computation; float64 must survive the worker threads (jax's
    x64 switch is per thread)."""
    rng = np.random.default_rng(3)
    xr = rng.standard_normal((5, 8, 8, 3))
    xc = np.concatenate([xr[:2], rng.standard_normal((9, 8, 8, 3))])  # shared images: 'same'
    one = K.kernel_tile(archs, xr, xc, depth=3, dtype=dtype, threads=1)
    for threads in (2, 3):
        got = K.kernel_tile(archs, xr, xc, depth=3, dtype=dtype, threads=threads)
        for a in archs:
            for k in ("nngp", "ntk"):
                assert got[a][k].dtype == np.dtype(dtype)
                np.testing.assert_allclose(got[a][k], one[a][k], rtol=1e-6 if dtype ==
                                           np.float32 else 1e-13)


def test_column_parts_cover_once():
    for n, threads in [(8, 1), (8, 2), (8, 3), (16, 3), (128, 2), (8, 16), (24, 5)]:
        parts = K._column_parts(n, threads)
        assert len(parts) <= threads
        assert [p[0] for p in parts[1:]] == [p[1] for p in parts[:-1]]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(b0 % 4 == 0 for b0, _ in parts)


class _FakeDevice:
    device_kind = "fake accelerator"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats


@pytest.mark.parametrize("stats, want, warns", [
    ({"bytes_limit": 100 * 2**30, "bytes_in_use": 0}, 2**26, False),   # big GPU: upper bound
    ({"bytes_limit": 2**30, "bytes_in_use": 2**29}, 2**20, False),      # 512 MiB free
    ({"bytes_limit": 16 * 2**30, "bytes_in_use": 0}, 2**25, False),     # 16 GiB: 4 GiB / 128 B
    (None, K._ITEM_ENTRIES_GPU, True),                                 # no report: fallback
    (NotImplementedError("no stats"), K._ITEM_ENTRIES_GPU, True),
])
def test_accelerator_work_items_are_sized_from_device_memory(monkeypatch, capsys, stats, want,
                                                             warns):
    monkeypatch.setattr(K.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(K.jax, "devices", lambda backend=None: [_FakeDevice(stats)])
    K._accelerator_item_entries.cache_clear()
    try:
        assert K.item_entries() == want
        err = capsys.readouterr().err
        assert ("fallback" in err and "fake accelerator" in err) == warns
        assert K.host_threads() == 1  # an accelerator call is not split over host threads
        rb, dc = K._item_rows_offsets(32 * 32, 128)
        assert rb == 64 and rb * dc * 1024 <= max(want, 1024 * 64)
    finally:
        K._accelerator_item_entries.cache_clear()


def test_host_threads_follows_omp_num_threads(monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert K.host_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert K.host_threads() >= 1
    assert "OMP_NUM_THREADS='lots'" in capsys.readouterr().err
