"""Theorem 4.1, exactly: training on tau D from theta_0 gives the same predictions as training on
D from theta_0 with the first layer pre-composed with tau, step by step, for fixed-order
mini-batch SGD with and without momentum and L2 (float64, so the tolerance is rounding only).
And the converse: a weight-shared conv first layer cannot absorb a pixel-dependent rotation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workers.errors import ConfigError
from workers.models import init_params, make_model, precompose_first_layer
from workers.theorem41 import is_invariant
from workers.train import Trainer
from workers.transforms import make_transform
from workers.vocab import ARCHS, TRANSFORMS

H, W, C, K = 8, 8, 3, 10
SHAPE = (H, W, C)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *SHAPE))
    labels = rng.integers(0, K, n)
    return x, np.eye(K)[labels] - 0.1


def _train(model, params, x, y, *, momentum, l2, steps=6):
    tr = Trainer(model, x, y, lr=0.4, batch_size=8, momentum=momentum, l2=l2, seed=11,
                 diverge_loss=1e12)
    state, info = tr.run(tr.init_state(params), 0, steps)
    assert info["bad_step"] == -1 and info["steps_done"] == steps
    return tr, state["params"]


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


# every non-trivial symmetry of a finite net in Theorem 4.1's table (workers/theorem41.py)
COUPLED = [(a, t) for a in ARCHS for t in TRANSFORMS
           if t != "identity" and is_invariant(a, t, infinite=False)]
# and every pair the table says is no symmetry
UNCOUPLED = [(a, t) for a in ARCHS for t in TRANSFORMS if not is_invariant(a, t, infinite=False)]


@pytest.mark.parametrize("momentum,l2", [(0.0, 0.0), (0.9, 1e-2)])
@pytest.mark.parametrize("arch,transform", COUPLED)
def test_training_on_tau_data_equals_training_the_precomposed_network(arch, transform,
                                                                       momentum, l2):
    model = make_model(arch, 3, depth=2, param_dtype=jnp.float64)
    tau = make_transform(transform, seed=5, image_shape=SHAPE)
    x, y = _data(24, 0)
    x_test, _ = _data(10, 1)
    theta0 = init_params(model, 2, SHAPE)
    theta0_tau = precompose_first_layer(theta0, arch, tau, SHAPE)

    # the re-parameterised first layer computes on x what the old one computed on tau x
    tr_a, theta_a = _train(model, theta0, tau(x), y, momentum=momentum, l2=l2)
    tr_b, theta_b = _train(model, theta0_tau, x, y, momentum=momentum, l2=l2)
    pred_a = np.asarray(tr_a.apply(theta_a, jnp.asarray(tau(x_test))))
    pred_b = np.asarray(tr_b.apply(theta_b, jnp.asarray(x_test)))
    np.testing.assert_allclose(pred_a, pred_b, rtol=1e-9, atol=1e-9)

    # the coupling holds for the weights too: same deeper layers, first layer still tau-composed
    coupled = precompose_first_layer(theta_a, arch, tau, SHAPE)
    for u, v in zip(_leaves(coupled), _leaves(theta_b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-10)

    # not vacuous: without the coupling, tau changes what is learned
    tr_c, theta_c = _train(model, theta0, x, y, momentum=momentum, l2=l2)
    pred_c = np.asarray(tr_c.apply(theta_c, jnp.asarray(x_test)))
    assert np.abs(pred_c - pred_b).max() > 1e-3


def test_precomposed_weights_have_the_same_norm_and_distribution_family():
    """tau orthogonal: ||theta'|| = ||theta|| (so L2 is unchanged) for every coupled case."""
    for arch, transform in COUPLED:
        model = make_model(arch, 3, depth=1, param_dtype=jnp.float64)
        theta = init_params(model, 0, SHAPE)
        tau = make_transform(transform, seed=1, image_shape=SHAPE)
        new = precompose_first_layer(theta, arch, tau, SHAPE)
        a, b = np.asarray(theta["layer_0"]["kernel"]), np.asarray(new["layer_0"]["kernel"])
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=1e-12)
        assert not np.allclose(a, b)


@pytest.mark.parametrize("arch,transform", UNCOUPLED)
def test_no_reparameterisation_where_the_table_has_no_symmetry(arch, transform):
    model = make_model(arch, 3, depth=1, param_dtype=jnp.float64)
    theta = init_params(model, 0, SHAPE)
    with pytest.raises(ConfigError, match="re-parameterisation"):
        precompose_first_layer(theta, arch, make_transform(transform, 0, SHAPE), SHAPE)


@pytest.mark.parametrize("arch", ["vec", "gap", "lap4"])
def test_conv_nets_have_no_reparameterisation_for_pixel_rotation(arch):
    model = make_model(arch, 3, depth=1, param_dtype=jnp.float64)
    theta = init_params(model, 0, SHAPE)
    with pytest.raises(ConfigError, match="shares its first-layer filter"):
        precompose_first_layer(theta, arch, make_transform("pixel_rotation", 0, SHAPE), SHAPE)


def test_lcn_has_no_reparameterisation_for_a_global_rotation():
    model = make_model("lcn", 3, depth=1, param_dtype=jnp.float64)
    theta = init_params(model, 0, SHAPE)
    with pytest.raises(ConfigError, match="no first-layer re-parameterisation"):
        precompose_first_layer(theta, "lcn", make_transform("global_rotation", 0, SHAPE), SHAPE)


def _best_shared_filter_residual(kernel, tau, x):
    """Least squares over *all* shared 3x3 filters W' of |conv(W', x) - conv(W, tau x)|,
    relative to |conv(W, tau x)|; returns (residual, W')."""
    from workers.models import patches3x3

    n_out = kernel.shape[-1]
    feats = np.asarray(patches3x3(jnp.asarray(x))).reshape(-1, 9 * C)   # (N H W, 9 C)
    target = np.asarray(patches3x3(jnp.asarray(tau(x)))).reshape(-1, 9 * C) @ \
        kernel.reshape(9 * C, n_out)
    sol, *_ = np.linalg.lstsq(feats, target, rcond=None)
    res = np.linalg.norm(feats @ sol - target) / np.linalg.norm(target)
    return res, sol.reshape(3, 3, C, n_out)


def test_no_shared_filter_reproduces_a_pixel_rotation_but_one_does_a_shared_rotation():
    model = make_model("vec", 4, depth=1, param_dtype=jnp.float64)
    theta = init_params(model, 3, SHAPE)
    kernel = np.asarray(theta["layer_0"]["kernel"])
    x, _ = _data(20, 7)
    shared = make_transform("shared_rotation", 2, SHAPE)
    res, sol = _best_shared_filter_residual(kernel, shared, x)
    assert res < 1e-10
    np.testing.assert_allclose(
        sol, np.asarray(precompose_first_layer(theta, "vec", shared, SHAPE)["layer_0"]["kernel"]),
        atol=1e-9)
    res_pixel, _ = _best_shared_filter_residual(kernel, make_transform("pixel_rotation", 2, SHAPE),
                                                x)
    assert res_pixel > 0.5     # the best shared filter misses most of the signal
