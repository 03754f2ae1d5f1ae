"""Finite networks: shapes, parameter counts, layer semantics against numpy references, and the
NTK parameterisation against the closed-form arc-cosine kernel."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workers.errors import ConfigError
from workers.models import count_params, init_params, make_model
from workers.vocab import ARCHS

H, W, C, N = 8, 8, 3, 5


def _x(n=N, seed=0):
    return np.random.default_rng(seed).standard_normal((n, H, W, C)).astype(np.float32)


def _expected_count(arch, n, depth, k=10):
    d = H * W * C
    if arch == "fcn":
        hidden = (d * n + n) + (depth - 1) * (n * n + n)
        return hidden + n * k + k
    if arch == "lcn":
        hidden = H * W * (9 * C * n + n) + (depth - 1) * H * W * (9 * n * n + n)
        return hidden + H * W * n * k + k
    hidden = (9 * C * n + n) + (depth - 1) * (9 * n * n + n)
    spatial = {"vec": H * W, "gap": 1, "lap4": (H // 4) * (W // 4), "lap8": 1}[arch]
    return hidden + spatial * n * k + k


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_parameter_counts(arch):
    model = make_model(arch, 6, depth=3)
    params = init_params(model, jax.random.key(0), (H, W, C))
    out = model.apply({"params": params}, jnp.asarray(_x()))
    assert out.shape == (N, 10)
    assert np.all(np.isfinite(np.asarray(out)))
    assert count_params(params) == _expected_count(arch, 6, 3)
    assert sorted(params) == ["layer_0", "layer_1", "layer_2", "readout"]
    if arch == "lcn":  # per-position filters and biases
        assert params["layer_0"]["kernel"].shape == (H, W, 9, C, 6)
        assert params["layer_1"]["bias"].shape == (H, W, 6)


def _np_conv_circular(x, kern):
    """Reference: y[n,h,w,o] = sum_{i,j,c} x[n,(h+i-1)%H,(w+j-1)%W,c] kern[i,j,c,o]."""
    n, h, w, _ = x.shape
    y = np.zeros((n, h, w, kern.shape[-1]))
    for i in range(3):
        for j in range(3):
            shifted = np.roll(x, shift=(-(i - 1), -(j - 1)), axis=(1, 2))
            y += np.einsum("nhwc,co->nhwo", shifted, kern[i, j])
    return y


def test_conv_layer_is_circular_3x3_with_ntk_scaling():
    model = make_model("gap", 4, depth=1, b_var=0.0)
    params = init_params(model, jax.random.key(1), (H, W, C))
    x = _x()
    kern = np.asarray(params["layer_0"]["kernel"], np.float64)
    ref = math.sqrt(2.0) / math.sqrt(9 * C) * _np_conv_circular(x.astype(np.float64), kern)
    ref = np.maximum(ref, 0).mean(axis=(1, 2))
    ro = params["readout"]
    logits = math.sqrt(2.0) / math.sqrt(4) * ref @ np.asarray(ro["kernel"], np.float64)
    got = np.asarray(model.apply({"params": params}, jnp.asarray(x)))
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-5)


def test_lcn_with_tied_filters_equals_the_conv_net():
    conv = make_model("vec", 5, depth=2)
    lcn = make_model("lcn", 5, depth=2)
    pc = init_params(conv, jax.random.key(2), (H, W, C))
    tied = {
        name: {"kernel": jnp.broadcast_to(p["kernel"].reshape(9, *p["kernel"].shape[2:]),
                                          (H, W, 9, *p["kernel"].shape[2:])),
               "bias": jnp.broadcast_to(p["bias"], (H, W, p["bias"].shape[0]))}
        for name, p in pc.items() if name.startswith("layer_")
    }
    tied["readout"] = pc["readout"]
    x = jnp.asarray(_x())
    np.testing.assert_allclose(np.asarray(lcn.apply({"params": tied}, x)),
                               np.asarray(conv.apply({"params": pc}, x)), rtol=1e-5, atol=1e-5)


def test_lcn_is_not_shift_equivariant_but_conv_is():
    """Circular conv layers commute with a cyclic shift of the image; lcn's do not."""
    x = _x(2)
    xs = np.roll(x, 1, axis=1)
    gap = make_model("gap", 4, depth=2)
    pg = init_params(gap, jax.random.key(3), (H, W, C))
    np.testing.assert_allclose(np.asarray(gap.apply({"params": pg}, xs)),
                               np.asarray(gap.apply({"params": pg}, x)), rtol=1e-4, atol=1e-5)
    lcn = make_model("lcn", 4, depth=2)
    pl = init_params(lcn, jax.random.key(3), (H, W, C))
    diff = np.abs(np.asarray(lcn.apply({"params": pl}, xs) - lcn.apply({"params": pl}, x)))
    assert diff.max() > 1e-2


def _arccos_nngp_fcn(x, depth, w_var=2.0, b_var=0.01):
    """Closed-form NNGP of a depth-`depth` ReLU fcn in NTK parameterisation (numpy, float64)."""
    f = x.reshape(x.shape[0], -1).astype(np.float64)
    k = w_var * f @ f.T / f.shape[1] + b_var
    for _ in range(depth):
        d = np.sqrt(np.diag(k))
        rho = np.clip(k / np.outer(d, d), -1.0, 1.0)
        th = np.arccos(rho)
        k = w_var * np.outer(d, d) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
        k = k + b_var
    return k


def test_ntk_parameterisation_matches_the_closed_form_nngp():
    """Empirical output covariance of a wide fcn over inits and logits -> arc-cosine kernel."""
    x = _x(4, seed=5)
    depth, width = 3, 512
    model = make_model("fcn", width, depth=depth)
    outs = []
    for s in range(24):
        p = init_params(model, jax.random.key(100 + s), (H, W, C))
        outs.append(np.asarray(model.apply({"params": p}, jnp.asarray(x)), np.float64))
    f = np.concatenate(outs, axis=1)                      # (4, 24 * 10) draws per input
    emp = f @ f.T / f.shape[1]
    ref = _arccos_nngp_fcn(x, depth)
    # 240 draws: relative Monte-Carlo error ~ sqrt(2/240) ~ 9% on the diagonal
    np.testing.assert_allclose(emp, ref, rtol=0.3, atol=0.15 * ref.max())
    assert abs(np.trace(emp) / np.trace(ref) - 1) < 0.15


def test_uniform_first_layer_has_unit_variance_and_bounded_support():
    m = make_model("fcn", 256, depth=2, first_layer_init="uniform")
    p = init_params(m, jax.random.key(0), (H, W, C))
    w0 = np.asarray(p["layer_0"]["kernel"])
    assert np.abs(w0).max() <= math.sqrt(3) + 1e-6
    assert abs(w0.var() - 1.0) < 0.02
    w1 = np.asarray(p["layer_1"]["kernel"])
    assert np.abs(w1).max() > math.sqrt(3)  # later layers stay Gaussian


def test_bad_names_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown arch"):
        make_model("resnet", 4)
    with pytest.raises(ConfigError, match="first_layer_init"):
        make_model("fcn", 4, first_layer_init="orthogonal")
    with pytest.raises(ConfigError, match="width"):
        make_model("fcn", 0)


@pytest.mark.parametrize("arch", ["vec", "gap"])
def test_wide_conv_nets_match_the_analytic_nngp_and_ntk_of_workers_kernels(arch):
    """Same conventions as the infinite-width kernels (readout scaling, flatten, pooling):
    the Monte-Carlo NNGP over inits x logits and the per-logit empirical NTK of one wide net
    match `workers.kernels.kernel_matrix` within their sampling/finite-width error."""
    from workers.eta0 import empirical_ntk
    from workers.kernels import kernel_matrix

    x = _x(3, seed=9)
    ref = kernel_matrix(arch, x, depth=2)
    model = make_model(arch, 128, depth=2)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    f = np.concatenate([np.asarray(apply(init_params(model, s, (H, W, C)), x), np.float64)
                        for s in range(16)], axis=1)                 # 160 draws
    nngp = f @ f.T / f.shape[1]
    np.testing.assert_allclose(nngp / ref["nngp"], 1.0, atol=0.3)
    assert np.trace(nngp) / np.trace(ref["nngp"]) == pytest.approx(1.0, abs=0.15)
    params = init_params(model, 99, (H, W, C))
    ntk = np.asarray(empirical_ntk(lambda p, x: model.apply({"params": p}, x), params,
                                   jnp.asarray(x))) / 10            # per logit
    np.testing.assert_allclose(ntk / ref["ntk"], 1.0, atol=0.2)
