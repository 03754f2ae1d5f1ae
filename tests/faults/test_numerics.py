"""Numerics under faults: b_var = 0 with zero-variance inputs (an all-zero image, all-zero
patches under a conv) gives finite kernels equal to the b_var -> 0 limit."""

from __future__ import annotations

import numpy as np
import pytest

from workers.kernels import kernel_matrices, relu_kernels


def _images() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1))
    x[1] = 0.0  # an all-zero image: zero variance everywhere
    x[2, :5, :5] = 0.0  # all-zero 3x3 patches under a conv
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_b_var_zero_is_finite_and_the_limit(dtype):
    x = _images()
    archs = ["fcn", "vec", "gap"]
    zero = kernel_matrices(archs, x, depth=3, b_var=0.0, dtype=dtype)
    # References that never take the zero-variance branch: b_var = 1e-8 and 1e-12. Entries
    # against a zero-variance side are O(sqrt(b_var)) (s1 = sqrt(b_var)), so the gap shrinks
    # ~100x from one to the other: b_var = 0 is the limit, not just some finite value.
    tol = 1e-5 if dtype == np.float64 else 1e-4
    for a in archs:
        for k in ("nngp", "ntk"):
            got = zero[a][k]
            assert np.isfinite(got).all(), (a, k, dtype)
            gaps = []
            for b in (1e-8, 1e-12):
                ref = kernel_matrices([a], x, depth=3, b_var=b, dtype=np.float64)[a][k]
                gaps.append(np.abs(got - ref).max() / np.abs(ref).max())
            assert gaps[0] <= 1e-3 and gaps[1] <= tol, (a, k, dtype, gaps)
            # the all-zero image: its row and column are exactly 0 (relu(0) = 0, no gradient)
            assert not got[1].any() and not got[:, 1].any(), (a, k, dtype)


def test_relu_kernels_zero_variance_entries():
    """Elementwise: s1 = 0 or s2 = 0 (then k = t = 0) gives (0, 0); other entries unchanged."""
    k = np.array([0.0, 0.0, 0.0, 0.3])
    t = np.array([0.0, 0.0, 0.0, 0.5])
    s1 = np.array([0.0, 1.0, 0.0, 1.0])
    s2 = np.array([1.0, 0.0, 0.0, 1.0])
    kk, tt = (np.asarray(v) for v in relu_kernels(k, t, s1, s2, None))
    assert np.isfinite(kk).all() and np.isfinite(tt).all()
    np.testing.assert_array_equal(kk[:3], 0.0)
    np.testing.assert_array_equal(tt[:3], 0.0)
    # the ordinary entry against the closed form (arc-cosine kernel of degree 1 and 0)
    th = np.arccos(0.3)
    np.testing.assert_allclose(kk[3], (np.sin(th) + (np.pi - th) * 0.3) / (2 * np.pi), rtol=1e-6)
    np.testing.assert_allclose(tt[3], 0.5 * (np.pi - th) / (2 * np.pi), rtol=1e-6)


def test_monte_carlo_zero_image_fcn():
    """Monte-Carlo over the hidden units of a wide ReLU layer with b = 0: relu(W 0) = 0 for
    every draw, so K(0, x) = 0 -- the value the kernel now gives (was NaN) -- and the other
    entries agree with the estimate to its noise (n = 20000 units: ~1% relative)."""
    rng = np.random.default_rng(1)
    x = _images().reshape(4, -1)
    d, n = x.shape[1], 20_000
    h = np.maximum(x @ (rng.normal(size=(d, n)) * np.sqrt(2.0 / d)), 0.0)
    emp = 2.0 * h @ h.T / n  # readout weight variance 2, no bias
    r = kernel_matrices(["fcn"], x.reshape(4, 8, 8, 1), depth=1, b_var=0.0, dtype=np.float64)
    k = r["fcn"]["nngp"]
    assert not emp[1].any() and not k[1].any() and not k[:, 1].any()
    keep = [0, 2, 3]
    np.testing.assert_allclose(k[np.ix_(keep, keep)], emp[np.ix_(keep, keep)], rtol=0.05)
