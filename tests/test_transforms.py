"""The five groups and the continuous path: orthogonality, structure, Haar plausibility, seeds."""

import numpy as np
import pytest
import scipy.linalg

from workers.errors import ConfigError
from workers.transforms import (
    TRANSFORMS,
    haar_orthogonal,
    make_transform,
    path_generator,
    path_transform,
    skew_exp,
)

SHAPE = (4, 5, 3)
D = 4 * 5 * 3


def _images(n=7, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_orthogonal_preserves_norms_and_inner_products(name):
    x = _images()
    y = make_transform(name, seed=3, image_shape=SHAPE)(x)
    assert y.shape == x.shape
    gx = x.reshape(len(x), -1) @ x.reshape(len(x), -1).T
    gy = y.reshape(len(y), -1) @ y.reshape(len(y), -1).T
    np.testing.assert_allclose(gy, gx, rtol=1e-12, atol=1e-12)
    m = make_transform(name, seed=3, image_shape=SHAPE).matrix()
    np.testing.assert_allclose(m @ m.T, np.eye(D), atol=1e-12)


@pytest.mark.parametrize("name", TRANSFORMS[1:])
def test_non_identity_transforms_change_images(name):
    x = _images()
    y = make_transform(name, seed=0, image_shape=SHAPE)(x)
    assert np.abs(y - x).max() > 1e-2


def test_identity_is_identity():
    x = _images()
    np.testing.assert_array_equal(make_transform("identity", 0, SHAPE)(x), x)


def test_shared_rotation_uses_one_matrix_at_every_pixel():
    tau = make_transform("shared_rotation", seed=1, image_shape=SHAPE)
    x = _images()
    y = tau(x)
    for h in range(SHAPE[0]):
        for w in range(SHAPE[1]):
            np.testing.assert_allclose(y[:, h, w], x[:, h, w] @ tau.Q.T, atol=1e-12)
    # the matrix is block diagonal with the same block everywhere
    m = tau.matrix()
    for a in range(SHAPE[0] * SHAPE[1]):
        np.testing.assert_allclose(m[3 * a : 3 * a + 3, 3 * a : 3 * a + 3], tau.Q, atol=1e-12)


def test_pixel_rotation_differs_per_pixel_and_is_block_diagonal():
    tau = make_transform("pixel_rotation", seed=1, image_shape=SHAPE)
    d = SHAPE[0] * SHAPE[1]
    assert tau.Qs.shape == (d, 3, 3)
    m = tau.matrix()
    mask = np.kron(np.eye(d), np.ones((3, 3)))
    assert np.abs(m * (1 - mask)).max() == 0.0  # no mixing between pixels
    for a in range(d):
        np.testing.assert_allclose(m[3 * a : 3 * a + 3, 3 * a : 3 * a + 3], tau.Qs[a], atol=1e-12)
    diffs = [np.abs(tau.Qs[a] - tau.Qs[0]).max() for a in range(1, d)]
    assert min(diffs) > 1e-3


def test_permutation_is_a_permutation():
    tau = make_transform("permutation", seed=2, image_shape=SHAPE)
    assert sorted(tau.perm.tolist()) == list(range(D))
    m = tau.matrix()
    assert set(np.unique(m).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(m.sum(0), 1)
    np.testing.assert_array_equal(m.sum(1), 1)


def test_global_rotation_mixes_everything_and_is_chunked_correctly(monkeypatch):
    import workers.transforms as T

    tau = make_transform("global_rotation", seed=2, image_shape=SHAPE)
    x = _images(n=11)
    whole = tau(x)
    monkeypatch.setattr(T, "_CHUNK", 3)  # several chunks, the last one ragged
    np.testing.assert_allclose(tau(x), whole, atol=1e-12)
    np.testing.assert_allclose(whole.reshape(11, -1), x.reshape(11, -1) @ tau.O.T, atol=1e-12)
    assert (np.abs(tau.O) > 1e-6).mean() > 0.99  # dense, unlike the block-diagonal groups


def test_float32_in_float32_out():
    x = _images().astype(np.float32)
    for name in TRANSFORMS:
        assert make_transform(name, 0, SHAPE)(x).dtype == np.float32


def test_haar_plausible():
    rng = np.random.default_rng(0)
    qs = haar_orthogonal(rng, 3, size=(4000,))
    dets = np.linalg.det(qs)
    np.testing.assert_allclose(np.abs(dets), 1.0, atol=1e-10)
    frac_pos = (dets > 0).mean()
    assert 0.45 < frac_pos < 0.55  # both components of O(3), equally likely
    # Haar on O(n): each entry has mean 0 and variance 1/n
    n = 200
    o = haar_orthogonal(rng, n)
    assert abs(o.mean()) < 3 / n  # std of the mean of n^2 entries is 1/n^1.5
    assert abs(o.var() * n - 1.0) < 0.05
    # the first column is uniform on the sphere: E[q_11^2] = 1/3 for 3x3
    assert abs((qs[:, 0, 0] ** 2).mean() - 1 / 3) < 0.02
    # without the sign fix, QR's R has a positive diagonal bias; with it, diag(Q) is symmetric
    assert abs(qs[:, 0, 0].mean()) < 0.03


def test_same_seed_same_tau_different_seed_different_tau():
    for name in TRANSFORMS[1:]:
        a = make_transform(name, 5, SHAPE).matrix()
        b = make_transform(name, 5, SHAPE).matrix()
        c = make_transform(name, 6, SHAPE).matrix()
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - c).max() > 1e-3


def test_full_cifar_global_rotation_bounded_memory():
    tau = make_transform("global_rotation", seed=0, image_shape=(32, 32, 3))
    x = _images(n=5, shape=(32, 32, 3)).astype(np.float32)
    y = tau(x)
    np.testing.assert_allclose(
        np.linalg.norm(y.reshape(5, -1), axis=1),
        np.linalg.norm(x.reshape(5, -1), axis=1),
        rtol=1e-4,
    )


def test_skew_exp_matches_scipy_expm():
    a = path_generator(0, SHAPE)
    for t in (0.0, 0.3, 1.0, 2.5):
        ours = skew_exp(a, t)
        ref = np.stack([scipy.linalg.expm(-t * ai) for ai in a])
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_path_starts_at_identity_ends_at_exp_minus_a_stays_orthogonal():
    x = _images()
    np.testing.assert_allclose(path_transform(0.0, 1, SHAPE)(x), x, atol=1e-14)
    a = path_generator(1, SHAPE)
    np.testing.assert_allclose(a, -np.swapaxes(a, -1, -2))
    end = path_transform(1.0, 1, SHAPE)
    ref = np.stack([scipy.linalg.expm(-ai) for ai in a])
    np.testing.assert_allclose(end.Qs, ref, atol=1e-12)
    for t in np.linspace(0, 1, 6):
        qs = path_transform(t, 1, SHAPE).Qs
        np.testing.assert_allclose(
            qs @ np.swapaxes(qs, -1, -2), np.broadcast_to(np.eye(3), qs.shape), atol=1e-12
        )
        np.testing.assert_allclose(np.linalg.det(qs), 1.0, atol=1e-12)  # in SO(3)^d
    # it moves: distance from the identity grows along the path
    dist = [np.abs(path_transform(t, 1, SHAPE).Qs - np.eye(3)).mean() for t in (0.1, 0.5, 1.0)]
    assert dist[0] < dist[1] < dist[2]
    assert np.abs(path_transform(1.0, 2, SHAPE).Qs - end.Qs).max() > 1e-3


def test_unknown_transform_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown transform 'rotate'.*identity, shared_rotation"):
        make_transform("rotate", 0)


def test_wrong_image_shape_is_a_clear_error():
    tau = make_transform("shared_rotation", 0, SHAPE)
    with pytest.raises(ConfigError, match="built for images of shape"):
        tau(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ConfigError, match="image_shape must be"):
        make_transform("identity", 0, (8, 8))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_empty_batch(name):
    y = make_transform(name, 0, SHAPE)(np.zeros((0, *SHAPE), np.float32))
    assert y.shape == (0, *SHAPE) and y.dtype == np.float32


def test_memoised_draws_are_read_only():
    tau = make_transform("global_rotation", 0, SHAPE)
    assert make_transform("global_rotation", 0, SHAPE) is tau
    with pytest.raises(ValueError):
        tau.O[0, 0] = 1.0
