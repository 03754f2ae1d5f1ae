"""Finite-width networks of the paper in flax (linen), NTK parameterisation.

Every layer stores standard-normal parameters omega (weights) and beta (biases) and computes
``(sigma_w / sqrt(fan_in)) * omega`` and ``sigma_b * beta`` in the forward pass, so that the
network at initialisation is the finite-width version of the kernels in `workers.kernels`.

Architectures (``depth`` hidden layers of ReLU, then a dense readout to ``num_classes`` logits):

=======  ========================================  =====================================
arch     hidden layer                              readout
=======  ========================================  =====================================
fcn      dense on the flattened image (C-order)    dense
lcn      locally connected 3x3 (unshared weights   flatten + dense
         and biases per output pixel), circular
vec      conv 3x3, stride 1, circular padding      flatten + dense
gap      conv 3x3                                  global average pool + dense
lap4/8   conv 3x3                                  k x k average pool, stride k, flatten + dense
=======  ========================================  =====================================

Parameter layout (the Theorem 4.1 coupling code relies on it): ``params["layer_0"]`` ...
``params[f"layer_{depth-1}"]`` and ``params["readout"]``, each a dict with ``kernel`` and
``bias``. Kernel shapes: dense ``(fan_in, width)`` with fan_in = H*W*C flattened C-order NHWC;
conv ``(3, 3, C_in, width)`` (HWIO, tap (i, j) reads pixel (h + i - 1, w + j - 1) mod (H, W));
locally connected ``(H, W, 9, C_in, width)`` (tap k = 3 i + j as for conv) with bias
``(H, W, width)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from workers.errors import ConfigError
from workers.theorem41 import is_invariant
from workers.vocab import ARCHS, DIAG_COV_ARCHS, FIRST_LAYER_INITS, TRANSFORMS

Array = jax.Array


def _omega_init(kind: str) -> Callable[..., Array]:
    """Initialiser for the standardised parameters omega: unit variance either way."""
    if kind == "gaussian":
        return nn.initializers.normal(stddev=1.0)
    if kind == "uniform":
        s = math.sqrt(3.0)
        return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, minval=-s, maxval=s)
    raise ConfigError(
        f"unknown first_layer_init {kind!r}; use one of {', '.join(FIRST_LAYER_INITS)}")


def circular_pad(x: Array, pad: int = 1) -> Array:
    """Wrap-pad the two spatial axes of (N, H, W, C) to (N, H + 2 pad, W + 2 pad, C)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="wrap")


def patches3x3(x: Array) -> Array:
    """(N, H, W, C) -> (N, H, W, 9, C): tap k = 3 i + j holds x[(h + i - 1), (w + j - 1)]."""
    h, w = x.shape[1], x.shape[2]
    xp = circular_pad(x, 1)
    return jnp.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)


class NTKDense(nn.Module):
    """Dense layer on (N, D) -> (N, features) with NTK parameterisation."""

    features: int
    w_std: float
    b_std: float
    init: str = "gaussian"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", _omega_init(self.init), (fan_in, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.normal(1.0), (self.features,),
                          self.param_dtype)
        return (self.w_std / math.sqrt(fan_in)) * (x @ kernel) + self.b_std * bias


class NTKConv(nn.Module):
    """3x3 stride-1 circular convolution, (N, H, W, C) -> (N, H, W, features)."""

    features: int
    w_std: float
    b_std: float
    init: str = "gaussian"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        kernel = self.param("kernel", _omega_init(self.init), (3, 3, c, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.normal(1.0), (self.features,),
                          self.param_dtype)
        y = jax.lax.conv_general_dilated(
            circular_pad(x, 1), kernel, window_strides=(1, 1), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (self.w_std / math.sqrt(9 * c)) * y + self.b_std * bias


class NTKLocal(nn.Module):
    """Unshared 3x3 circular layer: every output pixel has its own filter and bias."""

    features: int
    w_std: float
    b_std: float
    init: str = "gaussian"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, h, w, c = x.shape
        kernel = self.param("kernel", _omega_init(self.init), (h, w, 9, c, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.normal(1.0), (h, w, self.features),
                          self.param_dtype)
        y = jnp.einsum("nhwkc,hwkco->nhwo", patches3x3(x), kernel)
        return (self.w_std / math.sqrt(9 * c)) * y + self.b_std * bias


class Network(nn.Module):
    """One of the paper's architectures; input (N, H, W, C) float, output (N, num_classes)."""

    arch: str
    width: int
    depth: int = 8
    w_var: float = 2.0
    b_var: float = 0.01
    first_layer_init: str = "gaussian"
    num_classes: int = 10
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w_std, b_std = math.sqrt(self.w_var), math.sqrt(self.b_var)
        kw = dict(w_std=w_std, b_std=b_std, param_dtype=self.param_dtype)
        h = x.reshape(x.shape[0], -1) if self.arch == "fcn" else x
        layer = {"fcn": NTKDense, "lcn": NTKLocal}.get(self.arch, NTKConv)
        for i in range(self.depth):
            init = self.first_layer_init if i == 0 else "gaussian"
            h = nn.relu(layer(self.width, init=init, name=f"layer_{i}", **kw)(h))
        if self.arch in ("gap",):
            h = h.mean(axis=(1, 2))
        elif self.arch in ("lap4", "lap8"):
            k = int(self.arch[3:])
            n, hh, ww, c = h.shape
            if hh % k or ww % k:
                raise ConfigError(f"{self.arch} needs image sides divisible by {k}, got "
                                  f"{hh}x{ww}; use another image_size or arch")
            h = h.reshape(n, hh // k, k, ww // k, k, c).mean(axis=(2, 4))
        h = h.reshape(h.shape[0], -1)
        init = self.first_layer_init if self.depth == 0 else "gaussian"
        return NTKDense(self.num_classes, init=init, name="readout", **kw)(h)


def make_model(arch: str, width: int, *, depth: int = 8, w_var: float = 2.0,
               b_var: float = 0.01, first_layer_init: str = "gaussian", num_classes: int = 10,
               param_dtype: Any = jnp.float32) -> Network:
    """Build a flax module: ``model.init(key, x)`` -> params, ``model.apply(params, x)`` ->
    logits (N, num_classes) for x of shape (N, H, W, C).

    ``width`` is the hidden width (fcn) or channel count (conv nets, lcn); ``depth`` the number
    of hidden layers (0 gives a linear model); ``first_layer_init`` is ``gaussian`` or
    ``uniform`` (equal variance) for the first layer's omega.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    if int(width) < 1 or int(depth) < 0:
        raise ConfigError(f"width must be >= 1 and depth >= 0, got width={width}, "
                          f"depth={depth}")
    if first_layer_init not in FIRST_LAYER_INITS:
        raise ConfigError(f"unknown first_layer_init {first_layer_init!r}; use one of "
                          f"{', '.join(FIRST_LAYER_INITS)}")
    return Network(arch=arch, width=int(width), depth=int(depth), w_var=float(w_var),
                   b_var=float(b_var), first_layer_init=first_layer_init,
                   num_classes=int(num_classes), param_dtype=param_dtype)


def init_params(model: Network, seed: int | Sequence[int] | Array,
                image_shape: Sequence[int]) -> dict:
    """Initial parameters for inputs of shape (H, W, C): every omega and beta i.i.d. N(0, 1)
    (the first layer's omega uniform on [-sqrt 3, sqrt 3] when ``first_layer_init='uniform'``).

    Drawn with numpy from ``SeedSequence(seed)`` (an int, a tuple of ints, or a jax key whose
    key data is used), leaf by leaf in pytree order: identical on every backend and free of XLA
    compilation (an XLA threefry initialiser takes seconds to compile on a CPU). The
    distribution is exactly that of ``model.init``.
    """
    if isinstance(seed, jax.Array):
        entropy = [int(v) for v in np.asarray(jax.random.key_data(seed)).ravel()]
    elif isinstance(seed, (int, np.integer)):
        entropy = [int(seed)]
    else:
        entropy = [int(v) for v in seed]
    shape = (1, *(int(s) for s in image_shape))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape, model.param_dtype)))["params"]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    first = "layer_0" if model.depth > 0 else "readout"

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> Array:
        names = [getattr(k, "key", None) for k in path]
        dt = np.dtype(leaf.dtype)
        if model.first_layer_init == "uniform" and names == [first, "kernel"]:
            a = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), leaf.shape)
        else:
            a = rng.standard_normal(leaf.shape, dtype=np.float64 if dt == np.float64
                                    else np.float32)
        return jnp.asarray(a.astype(dt, copy=False))

    return jax.tree_util.tree_map_with_path(draw, abstract)


def count_params(params: Any) -> int:
    """Total number of scalar parameters in a pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def _tau_matrices_per_pixel(transform: Any, h: int, w: int, c: int) -> Array | None:
    """(H*W, C, C) per-pixel matrices M_p with tau(x)[p] = M_p x[p], or None if tau is not of
    that form (permutation, global rotation)."""
    if getattr(transform, "Q", None) is not None:
        return jnp.broadcast_to(jnp.asarray(transform.Q), (h * w, c, c))
    if getattr(transform, "Qs", None) is not None:
        return jnp.asarray(transform.Qs).reshape(h * w, c, c)
    if getattr(transform, "perm", None) is None and getattr(transform, "O", None) is None:
        return jnp.broadcast_to(jnp.eye(c), (h * w, c, c))  # identity
    return None


def precompose_first_layer(params: dict, arch: str, transform: Any,
                           image_shape: Sequence[int]) -> dict:
    """First-layer weights pre-composed with tau (Theorem 4.1's coupling).

    Returns params' such that the first layer of ``params'`` computes on x exactly what the
    first layer of ``params`` computes on tau(x); all other parameters are shared. ``transform``
    is a `workers.transforms.Transform` (attributes ``name`` and ``Q`` (3, 3) / ``Qs`` (H*W, 3, 3)
    / ``perm`` (D,) / ``O`` (D, D)). Raises ConfigError when the model class has no such
    re-parameterisation (e.g. conv nets under ``pixel_rotation``: the filter is shared across
    pixels, so it cannot absorb a different Q at every pixel).
    """
    h, w, c = (int(s) for s in image_shape)
    d = h * w * c
    first = "layer_0" if "layer_0" in params else "readout"
    kern = jnp.asarray(params[first]["kernel"])
    name = getattr(transform, "name", None)
    if (first == "layer_0" and name in TRANSFORMS
            and not is_invariant(arch, name, infinite=False)):
        # Theorem 4.1's table (workers/theorem41.py): no coupling exists for this pair
        if arch == "lcn":
            raise ConfigError(f"lcn has no first-layer re-parameterisation for {name!r}: "
                              "its 3x3 filters read only a pixel's neighbourhood")
        raise ConfigError(f"{arch} shares its first-layer filter across pixels, so it has no "
                          f"re-parameterisation absorbing {name!r}; only identity and "
                          "shared_rotation are symmetries of this model class")
    per_pixel = _tau_matrices_per_pixel(transform, h, w, c)
    # vec and lcn read out densely from the flattened features, as fcn's first layer does
    if arch == "fcn" or (first == "readout" and arch in DIAG_COV_ARCHS):
        # dense on the flattened image: y_flat = M x_flat, x_flat @ M^T W  ->  W' = M^T W
        if getattr(transform, "O", None) is not None:
            new = jnp.asarray(transform.O).T @ kern
        elif getattr(transform, "perm", None) is not None:
            new = jnp.zeros_like(kern).at[jnp.asarray(transform.perm)].set(kern)
        elif per_pixel is not None:
            kr = kern.reshape(h * w, c, -1)
            new = jnp.einsum("pij,pio->pjo", per_pixel, kr).reshape(d, -1)
        else:
            raise ConfigError(f"no first-layer re-parameterisation for transform {name!r}")
    elif arch == "lcn" and first == "layer_0":
        if per_pixel is None:  # a transform outside the table (not one of the five)
            raise ConfigError(f"lcn has no first-layer re-parameterisation for {name!r}: "
                              "its 3x3 filters read only a pixel's neighbourhood")
        # tap k = 3 i + j at output pixel (a, b) reads pixel ((a + i - 1) % h, (b + j - 1) % w)
        src = jnp.array([[((a + i - 1) % h) * w + (b + j - 1) % w
                          for i in range(3) for j in range(3)]
                         for a in range(h) for b in range(w)]).reshape(h, w, 9)
        q = per_pixel[src]                                     # (h, w, 9, c, c)
        new = jnp.einsum("hwkij,hwkio->hwkjo", q, kern)
    elif first == "layer_0":
        # shared 3x3 filter: only a pixel-independent Q can be folded into its input channels
        if per_pixel is not None and bool(jnp.all(per_pixel == per_pixel[0])):
            # the same matrix at every pixel (identity, shared_rotation): fold it in
            new = jnp.einsum("ij,abio->abjo", per_pixel[0], kern)
        else:
            raise ConfigError(f"{arch} shares its first-layer filter across pixels, so it has no "
                              f"re-parameterisation absorbing {name!r}; only identity and "
                              "shared_rotation are symmetries of this model class")
    else:
        raise ConfigError(f"{arch} with depth 0 has no first-layer re-parameterisation")
    out = {k: dict(v) for k, v in params.items()}
    out[first]["kernel"] = new.astype(kern.dtype)
    return out
