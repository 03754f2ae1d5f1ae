"""Infinite-width NNGP and NTK kernels of the paper's ReLU networks (NTK parameterisation).

Conventions are neural-tangents' (v0.6.5, the paper's reference code), checked against golden
fixtures in ``tests/fixtures/nt``: one kernel per logit, inputs NHWC, the input covariance of
two images at pixels (a, a') is ``x[a] . x'[a'] / C``; a dense or 3x3 circular conv layer maps a
covariance K to ``w_var * avg(K) + b_var`` (avg over the 3x3 window, the same offset applied to
both pixels) and the NTK to ``w_var * avg(Theta) + K_new``; ReLU maps (K, Theta) with the
arc-cosine kernels J1 and J0; the readout is a dense layer after flatten (fcn, vec, lcn: mean of
the per-pixel covariance), global average pooling (gap: mean of the full covariance) or a k x k
average pool with stride k followed by flatten (lapk).

How it is computed (docs/performance.md):

* ``fcn`` needs one scalar per image pair per layer.
* ``vec`` / ``lcn`` need only the per-pixel (diagonal) covariance, H*W entries per pair (they are
  equal at infinite width: an unshared 3x3 layer propagates the diagonal exactly as a conv does).
* ``gap`` / ``lapk`` need the full (HW x HW) covariance. It is stored by offset,
  ``T[a, d] = K[a, a + d]`` (indices mod H, W), so the conv is an ordinary separable 3x3 box
  filter over ``a`` for each fixed ``d``, and each block of offsets ``d`` propagates through all
  layers independently of the others. The tile loops over (row block, column image, offset
  block) with a working set of a few hundred KB, so the whole depth-L recursion runs in cache.
  The per-pixel variances of the column image are carried in the same shifted layout
  (``V2[a, d] = V(x')[a + d]``; the box filter commutes with the shift), so no gather is needed
  inside the layer loop. Every readout (vec, lcn, gap, lap4, lap8) is a fixed linear functional
  of ``T``, so one propagation serves all of them.
* ReLU needs ``arccos(rho)`` per entry per layer; ``acos`` evaluates it with a polynomial
  (``arccos(x) = sqrt(1 - x) * P(x)`` on [0, 1]) accurate to float32 / float64 rounding,
  about 10x faster than XLA's ``arccos`` on CPU.
* Entries where an image meets itself (the same image on both sides, same pixel) are set to
  correlation exactly 1, so float32 diagonals do not pick up the ``sqrt(eps)`` error of the
  arc-cosine singularity.

Memory (``kernel_matrices``): tiles stream into preallocated (N1, N2) outputs of the assembled
archs as they arrive (``map_tiles(..., on_result=...)``), off-diagonal tiles of a symmetric
matrix are written with their transpose and diagonal tiles mirrored in place, so the peak is the
output plus about one tile (``benchmarks/memory.py``).

Public API: ``kernel_matrix``, ``kernel_matrices``, ``kernel_tile``, ``plan_tiles``, ``acos``,
``relu_kernels``, ``host_threads``, ``item_entries``, ``ARCHS``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from workers.errors import ConfigError, DataError
from workers.vocab import ARCHS, DIAG_COV_ARCHS, FULL_COV_ARCHS, KERNEL_INFERENCES

_DIAG = DIAG_COV_ARCHS
_FULL = FULL_COV_ARCHS

# Default tile memory budget (bytes) of `kernel_matrices` / `plan_tiles`.
DEFAULT_MEMORY_BYTES = 2 * 1024**3
# Numbers per array in one full-covariance work item (rows x offsets x pixels); about a dozen
# such arrays are live at once. On CPU this keeps an item within the L2/L3 caches: with the
# vectorised layer, 2^16-2^17 beat 2^18-2^20 by 15-25% CPU time for gap at 16x16 and 32x32
# (benchmarks/README.md, "Engine ideas").
_ITEM_ENTRIES_CPU = 2**17
# On an accelerator an item is sized from the device's free memory (`item_entries`): about
# 16 live arrays of this many numbers may use this fraction of it, between these bounds; the
# fallback when the device does not report its memory.
_ITEM_MEMORY_FRACTION = 0.25
_ITEM_ENTRIES_ACCEL = (2**20, 2**26)
_ITEM_ENTRIES_GPU = 2**23
# Largest tile side per path (rows = columns); keeps a tile a reasonable unit of work and retry.
_MAX_SIDE = {"fcn": 8192, "diag": 2048, "full": 128}

Array = Any
# Full-precision contractions: on recent GPUs XLA's default float32 matmul rounds its inputs to
# TF32 (10-bit mantissa), about 1e-3 relative error in the input covariance; a no-op on CPUs.
_EXACT = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# arc-cosine


def _cheb_fit(fn: Callable[[np.ndarray], np.ndarray], degree: int) -> tuple[float, ...]:
    """Monomial coefficients (lowest first) of the Chebyshev interpolant of fn on [0, 1]."""
    n = degree + 1
    xs = 0.5 + 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    cheb = np.polynomial.chebyshev.chebfit(2.0 * xs - 1.0, fn(xs), degree)
    in_u = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(cheb))
    return tuple(float(c) for c in in_u(np.polynomial.Polynomial([-1.0, 2.0])).coef)


def _p_fn(x: np.ndarray) -> np.ndarray:
    return np.arccos(x) / np.sqrt(1.0 - x)


def _r_fn(x: np.ndarray) -> np.ndarray:
    return (np.sqrt(1.0 + x) - x * _p_fn(x)) / (1.0 - x)


@cache
def _poly_coefficients(degree: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients of P and R on [0, 1] (lowest first), interpolated at Chebyshev nodes.

    P(x) = arccos(x) / sqrt(1 - x) and R(x) = (sqrt(1 + x) - x P(x)) / (1 - x) are analytic on
    [0, 1] (nearest singularity x = -1; R lies in [0.94, 1]), so degree 7 reaches float32
    rounding and degree 16 float64. With r = |rho|, s = sqrt(1 - r):
    arccos(r) = s P(r) and sin(theta) + (pi - theta) rho = s^3 R(r) + pi max(rho, 0).
    """
    return _cheb_fit(_p_fn, degree), _cheb_fit(_r_fn, degree)


def _degree(dtype: Any) -> int:
    return 16 if dtype == jnp.float64 else 7


def _horner(coef: Sequence[float], x: Array) -> Array:
    p = jnp.full_like(x, coef[-1])
    for c in coef[-2::-1]:
        p = p * x + c
    return p


def acos(x: Array) -> Array:
    """arccos(x) for x in [-1, 1], elementwise, any shape; float32 or float64.

    ``sqrt(1 - |x|) * P(|x|)`` with a polynomial P (degree 7 in float32, 16 in float64),
    reflected for x < 0; relative error at the dtype's rounding level (tested against
    ``np.arccos``), exactly 0 at x = 1; about 10x faster than XLA's ``arccos`` on CPU.
    """
    x = jnp.asarray(x)
    pc, _ = _poly_coefficients(_degree(x.dtype))
    ax = jnp.abs(x)
    r = jnp.sqrt(jnp.maximum(1.0 - ax, 0.0)) * _horner(pc, ax)
    return jnp.where(x < 0, math.pi - r, r)


def _arc_cosine(rho: Array, scale: Array, t: Array, pc: Any, rc: Any) -> tuple[Array, Array]:
    """The ReLU step from the correlation rho (clipped to [-1, 1]): the arc-cosine kernel
    K_out = scale J1(rho) / (2 pi) with scale = s1 s2, and Theta_out = Theta (pi - theta) / (2 pi),
    theta = arccos(rho), both by the polynomial arccos of `_poly_coefficients` (no arccos call:
    it does not vectorise on CPU). Shared by `relu_kernels` and `_relu_inv`."""
    r = jnp.abs(rho)
    u = 1.0 - r
    s = jnp.sqrt(u)
    a = s * _horner(pc, r)  # arccos(|rho|)
    pi_minus = jnp.where(rho >= 0, math.pi - a, a)  # pi - theta
    j1 = s * u * _horner(rc, r) + math.pi * jnp.maximum(rho, 0.0)
    c = 0.5 / math.pi
    return scale * j1 * c, t * pi_minus * c


def relu_kernels(k: Array, t: Array, s1: Array, s2: Array, same: Array | None) -> tuple:
    """One ReLU layer of the NNGP / NTK recursion, elementwise with broadcasting.

    k: pre-activation covariance; t: NTK so far; s1, s2: standard deviations (square roots of
    the variances) of the two sides at the same entries; same: boolean, True where the entry is
    an image with itself at the same pixel (correlation set to exactly 1), or None.
    Returns (E[relu(u) relu(v)], t * E[relu'(u) relu'(v)]) =
    (s1 s2 (sin th + (pi - th) cos th) / (2 pi), t (pi - th) / (2 pi)), cos th = k / (s1 s2).
    One square root per entry: with r = |cos th|, s = sqrt(1 - r), arccos(r) = s P(r) and
    sin th + (pi - th) cos th = s^3 R(r) + pi max(cos th, 0) (see `_poly_coefficients`).
    Where s1 or s2 is 0 both outputs are 0 (the b_var -> 0 limit; see the comment below).
    """
    pc, rc = _poly_coefficients(_degree(k.dtype))
    # A side with zero variance (b_var = 0 and an all-zero input or patch) has u == 0 almost
    # surely, so relu(u) == 0 and E[relu(u) relu(v)] = 0; and |k| <= s1 s2 = 0, |t| <= 0 there
    # (Cauchy-Schwarz on both kernels), so Theta_out = t * E[relu' relu'] = 0 whatever the
    # correlation. Those are the b_var -> 0 limits (checked against b_var = 1e-8 in
    # tests/faults/test_numerics.py). k / (s1 s2) would be 0 / 0 = NaN: use rho = 0 there (any
    # finite value gives the same outputs, both being multiplied by 0), and divide by 1 instead
    # of 0 so that no inf or NaN is formed at all.
    ok = (s1 > 0) & (s2 > 0)
    one = jnp.ones_like(s1 * s2)
    rho = jnp.clip(k * ((1.0 / jnp.where(ok, s1, one)) * (1.0 / jnp.where(ok, s2, one))),
                   -1.0, 1.0)
    rho = jnp.where(ok, rho, jnp.zeros_like(rho))
    if same is not None:
        rho = jnp.where(same, jnp.ones_like(rho), rho)
    return _arc_cosine(rho, s1 * s2, t, pc, rc)


def _inv_std(v: Array) -> tuple[Array, Array]:
    """(sqrt(v), 1 / sqrt(v) or 0 where v == 0) of a variance array (the small side arrays)."""
    s = jnp.sqrt(v)
    ok = s > 0
    return s, jnp.where(ok, 1.0 / jnp.where(ok, s, jnp.ones_like(s)), jnp.zeros_like(s))


def _relu_inv(k: Array, t: Array, s1: Array, i1: Array, s2: Array, i2: Array,
              same: Array | None) -> tuple[Array, Array]:
    """`relu_kernels` with the inverse standard deviations i1, i2 (0 where s = 0) given.

    The hot loop of the conv stacks: s1, i1 (H, W, m, 1) and s2, i2 (H, W, 1, n) are per-side
    arrays a factor m or n smaller than k, so the zero-variance guard (a select per entry in
    `relu_kernels`) moves onto them: with i = 0 there, rho = 0 and s1 s2 = 0, the same b_var -> 0
    limits. Measured about 20-30% less CPU time per layer than `relu_kernels`
    (benchmarks/README.md, "Engine ideas").
    """
    pc, rc = _poly_coefficients(_degree(k.dtype))
    rho = jnp.clip(k * (i1 * i2), -1.0, 1.0)
    if same is not None:
        rho = jnp.where(same, jnp.ones_like(rho), rho)
    return _arc_cosine(rho, s1 * s2, t, pc, rc)


def _box(x: Array, axes: tuple[int, int]) -> Array:
    """Sum over the 3x3 circular window on two axes (separable: two 1-D 3-tap passes); for the
    small per-side variance arrays (the covariances use `_window_pair`)."""
    for ax in axes:
        x = x + jnp.roll(x, 1, ax) + jnp.roll(x, -1, ax)
    return x


def _wrap_pad(x: Array) -> Array:
    """x (H, W, ...) padded circularly by one on both spatial axes: (H + 2, W + 2, ...)."""
    x = jnp.concatenate([x[-1:], x, x[:1]], axis=0)
    return jnp.concatenate([x[:, -1:], x, x[:, :1]], axis=1)


def _window_pair(k: Array, t: Array) -> tuple[Array, Array]:
    """The 3x3 circular window sums of k and t (H, W, ...) over their two leading axes.

    On a CPU the circularly padded copies are materialised first (`lax.optimization_barrier`)
    and the window is the sum of nine plain slices of them: XLA then compiles the window, the
    affine maps and the ReLU step into one loop that vectorises over the trailing (work item)
    axes. Fused into that loop instead, the wrap-around of a roll or concatenate becomes a
    per-element index select and the loop runs scalar: measured 1.6x more CPU time per layer
    (benchmarks/README.md, "Engine ideas"). Elsewhere XLA fuses the padding itself.
    """
    h, w = k.shape[0], k.shape[1]
    kp, tp = _wrap_pad(k), _wrap_pad(t)
    if jax.default_backend() == "cpu":
        kp, tp = lax.optimization_barrier((kp, tp))

    def window(xp: Array) -> Array:
        out = xp[1:h + 1, 1:w + 1]
        for i, j in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
            out = out + xp[i:i + h, j:j + w]
        return out

    return window(kp), window(tp)


# --------------------------------------------------------------------------------------------
# fcn


@jax.jit
def _fcn_tile(xr: Array, xc: Array, same: Array, w: Array, b: Array, depth: Array) -> Array:
    """fcn kernels of a tile. xr (R, D), xc (Cn, D), same (R, Cn) -> (2, R, Cn) [nngp, ntk]."""
    d = xr.shape[1]
    k = jnp.matmul(xr, xc.T, precision=_EXACT) / d
    v1 = jnp.sum(xr * xr, axis=1, keepdims=True) / d
    v2 = (jnp.sum(xc * xc, axis=1) / d)[None, :]
    t = jnp.zeros_like(k)

    def layer(_, carry):
        k, t, v1, v2 = carry
        k = w * k + b
        t = w * t + k
        v1 = w * v1 + b
        v2 = w * v2 + b
        k, t = _relu_inv(k, t, *_inv_std(v1), *_inv_std(v2), same)
        return k, t, 0.5 * v1, 0.5 * v2

    k, t, _, _ = lax.fori_loop(0, depth, layer, (k, t, v1, v2))
    k = w * k + b
    return jnp.stack([k, w * t + k])


# --------------------------------------------------------------------------------------------
# conv stack on one work item


def _propagate(k: Array, v1: Array, v2: Array, same: Array, w: Array, b: Array,
               depth: Array) -> tuple[Array, Array]:
    """depth x (3x3 circular conv + ReLU) on one work item; returns (nngp, ntk) covariances.

    k (H, W, m, n): input covariances, spatial axes first; v1 (H, W, m, 1), v2 (H, W, 1, n):
    the two sides' variances at the same entries (they propagate through the same conv since
    the conv commutes with a fixed spatial shift); same (1, 1, m, n) bool.
    """
    w9 = w / 9.0
    t = jnp.zeros_like(k)

    def layer(_, carry):
        k, t, v1, v2 = carry
        bk, bt = _window_pair(k, t)
        k = w9 * bk + b
        t = w9 * bt + k
        v1 = w9 * _box(v1, (0, 1)) + b
        v2 = w9 * _box(v2, (0, 1)) + b
        k, t = _relu_inv(k, t, *_inv_std(v1), *_inv_std(v2), same)
        return k, t, 0.5 * v1, 0.5 * v2

    k, t, _, _ = lax.fori_loop(0, depth, layer, (k, t, v1, v2))
    return k, t


# --------------------------------------------------------------------------------------------
# vec / lcn: per-pixel covariance only


@partial(jax.jit, static_argnames=("rb", "cb"))
def _diag_tile(xr: Array, xc: Array, same: Array, w: Array, b: Array, depth: Array,
               *, rb: int, cb: int) -> Array:
    """vec/lcn kernels. xr (R,H,W,C), xc (Cn,H,W,C), same (R,Cn) -> (2, R, Cn) [nngp, ntk].

    R and Cn are multiples of rb and cb; work items of rb x cb pairs, arrays (H, W, rb, cb).
    """
    n_rows, h, wd, c = xr.shape
    n_cols = xc.shape[0]
    xr_b = xr.reshape(n_rows // rb, rb, h, wd, c)
    xc_b = xc.reshape(n_cols // cb, cb, h, wd, c)
    same_b = same.reshape(n_rows // rb, rb, n_cols // cb, cb).transpose(0, 2, 1, 3)

    def item(xi: Array, xj: Array, sij: Array) -> Array:
        k = jnp.einsum("ihwc,jhwc->hwij", xi, xj, precision=_EXACT) / c
        v1 = jnp.einsum("ihwc,ihwc->hwi", xi, xi, precision=_EXACT)[..., None] / c
        v2 = jnp.einsum("jhwc,jhwc->hwj", xj, xj, precision=_EXACT)[:, :, None, :] / c
        k, t = _propagate(k, v1, v2, sij[None, None], w, b, depth)
        return jnp.stack([jnp.mean(k, axis=(0, 1)), jnp.mean(t, axis=(0, 1))])  # (2, rb, cb)

    def row(args):
        xi, si = args
        return lax.map(lambda a: item(xi, *a), (xc_b, si))  # (Cn/cb, 2, rb, cb)

    out = lax.map(row, (xr_b, same_b))  # (R/rb, Cn/cb, 2, rb, cb)
    out = out.transpose(2, 0, 3, 1, 4).reshape(2, n_rows, n_cols)
    k = w * out[0] + b
    return jnp.stack([k, w * out[1] + k])


# --------------------------------------------------------------------------------------------
# gap / lap (and vec / lcn readouts of the same propagation): full covariance by offset


def readout_weights(arch: str, h: int, w: int) -> np.ndarray:
    """Linear readout functional of arch on the offset layout: (H, W, H*W) float64.

    ``R(K) = sum_{a, d} weights[a, d] * K[a, a + d]`` equals neural-tangents' readout (before
    the final dense layer): vec/lcn mean of the diagonal, gap mean of all entries, lapk the mean
    over k x k pooled cells (VALID pooling, stride k) of the mean of K within the cell.
    """
    hw = h * w
    if arch in _DIAG:
        out = np.zeros((h, w, hw))
        out[:, :, 0] = 1.0 / hw
        return out
    if arch == "gap":
        return np.full((h, w, hw), 1.0 / hw**2)
    if arch in ("lap4", "lap8"):
        kk = int(arch[3:])
        nh, nw = h // kk, w // kk
        if nh == 0 or nw == 0:
            raise ConfigError(
                f"{arch} needs images of at least {kk}x{kk} pixels, got {h}x{w}; "
                "use a larger image_size or another arch"
            )
        ah, aw = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        dh, dw = np.divmod(np.arange(hw), w)
        bh = (ah[..., None] + dh) % h
        bw = (aw[..., None] + dw) % w
        valid = (ah[..., None] < nh * kk) & (aw[..., None] < nw * kk)
        same_cell = (ah[..., None] // kk == bh // kk) & (aw[..., None] // kk == bw // kk)
        mask = valid & same_cell & (bh < nh * kk) & (bw < nw * kk)
        return mask / (nh * nw * kk**4)
    raise ConfigError(f"no spatial readout for arch {arch!r}")


def _offset_index(h: int, w: int) -> np.ndarray:
    """idx[a, d] = flat index of pixel a + d (mod H, W), shape (H*W, H*W) int32."""
    ah, aw = np.divmod(np.arange(h * w), w)
    dh, dw = np.divmod(np.arange(h * w), w)
    return (((ah[:, None] + dh) % h) * w + (aw[:, None] + dw) % w).astype(np.int32)


def _divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    return max(d for d in range(1, cap + 1) if n % d == 0)


@partial(jax.jit, static_argnames=("rb", "dc"))
def _full_tile(
    xr: Array, xc: Array, same: Array, w: Array, b: Array, depth: Array,
    wts: Array, idx: Array, *, rb: int, dc: int,
) -> Array:
    """Full-covariance kernels of a tile for several readouts at once.

    xr (R, H, W, C) with R a multiple of rb; xc (Cn, H, W, C); same (R, Cn) bool;
    wts (n_r, H, W, H*W) readout weights; idx (H*W, H*W) offset index.
    Returns (n_r, 2, R, Cn): [nngp, ntk] per readout.
    One work item = rb rows x one column image x dc offsets; arrays (H, W, rb, dc).
    """
    n_rows, h, wd, c = xr.shape
    hw = h * wd
    n_r = wts.shape[0]
    n_chunks = hw // dc
    xr_b = xr.reshape(n_rows // rb, rb, hw, c)
    same_b = same.reshape(n_rows // rb, rb, same.shape[1])
    xc_f = xc.reshape(xc.shape[0], hw, c)

    def item(xrb: Array, xcj: Array, samej: Array, c0: Array) -> Array:
        ids = lax.dynamic_slice_in_dim(idx, c0, dc, axis=1)  # (hw, dc)
        xs = xcj[ids]  # (hw, dc, c): x'[a + d]
        k = jnp.einsum("iac,adc->aid", xrb, xs, precision=_EXACT).reshape(h, wd, rb, dc) / c
        v1 = (jnp.sum(xrb * xrb, axis=-1).T / c).reshape(h, wd, rb, 1)
        v2 = (jnp.sum(xs * xs, axis=-1) / c).reshape(h, wd, 1, dc)
        dpos = c0 + jnp.arange(dc)
        same_m = (samej[:, None] & (dpos == 0)[None, :])[None, None]  # (1, 1, rb, dc)
        k, t = _propagate(k, v1, v2, same_m, w, b, depth)
        wc = lax.dynamic_slice_in_dim(wts, c0, dc, axis=3)  # (n_r, h, w, dc)
        return jnp.stack([jnp.einsum("hwid,rhwd->ri", k, wc, precision=_EXACT),
                          jnp.einsum("hwid,rhwd->ri", t, wc, precision=_EXACT)],
                         axis=1)  # (n_r, 2, rb)

    def per_column(xrb: Array, sameb: Array) -> Array:
        def one(args):
            xcj, samej = args

            def chunk(acc, c0):
                return acc + item(xrb, xcj, samej, c0), None

            acc0 = jnp.zeros((n_r, 2, rb), xr.dtype)
            acc, _ = lax.scan(chunk, acc0, jnp.arange(n_chunks) * dc)
            return acc

        return lax.map(one, (xc_f, sameb.T))  # (Cn, n_r, 2, rb)

    out = lax.map(lambda a: per_column(*a), (xr_b, same_b))  # (R/rb, Cn, n_r, 2, rb)
    out = jnp.transpose(out, (2, 3, 0, 4, 1)).reshape(n_r, 2, n_rows, xc.shape[0])
    k = w * out[:, 0] + b
    return jnp.stack([k, w * out[:, 1] + k], axis=1)


# --------------------------------------------------------------------------------------------
# tiles


def _check_archs(archs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(archs, str):
        archs = (archs,)
    archs = tuple(dict.fromkeys(archs))
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise ConfigError(f"unknown arch {bad or archs}; choose from {', '.join(ARCHS)}")
    return archs


def _check_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise DataError(f"{name} must be images of shape (N, H, W, C), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name} contains NaN or infinite values; clean the data first")
    return x


def _same_images(xr: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """same[i, j] = True where row image i and column image j are identical, (R, Cn) bool.

    Candidates come from hashing 256 fixed coordinates of each image (identical images always
    collide), then are confirmed by a full comparison.
    """
    fr, fc = xr.reshape(len(xr), -1), xc.reshape(len(xc), -1)
    idx = np.unique(np.linspace(0, fr.shape[1] - 1, 256).astype(int))
    hr = np.array([hash(r.tobytes()) for r in np.ascontiguousarray(fr[:, idx])])
    hc = np.array([hash(r.tobytes()) for r in np.ascontiguousarray(fc[:, idx])])
    same = hr[:, None] == hc[None, :]
    ii, jj = np.nonzero(same)
    for s in range(0, len(ii), 1024):
        i, j = ii[s:s + 1024], jj[s:s + 1024]
        same[i, j] = np.all(fr[i] == fc[j], axis=1)
    return same


# Tiles are padded to a multiple of this many rows and columns, so that ragged edge tiles and
# small matrices reuse the same compiled code (at most 7 wasted rows / columns per tile).
_PAD = 8


def _padded(n: int) -> int:
    return -(-n // _PAD) * _PAD


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap dividing n."""
    m = 1
    while m * 2 <= cap and n % (m * 2) == 0:
        m *= 2
    return m


def item_entries(itemsize: int = 8) -> int:
    """Numbers per array in one work item on the default backend.

    CPU: `_ITEM_ENTRIES_CPU` (sized to the caches; benchmarks/README.md, "Engine ideas"). An
    accelerator: from its free memory, ``jax.devices()[0].memory_stats()`` (``bytes_limit`` -
    ``bytes_in_use``): the power of two whose ~16 live arrays of ``itemsize`` bytes take at
    most `_ITEM_MEMORY_FRACTION` of it, clipped to `_ITEM_ENTRIES_ACCEL`. A device that does not
    report its memory gets `_ITEM_ENTRIES_GPU` and a warning on stderr (once per process).
    Itemsize 8 (float64) by default so the same size also fits a float64 run.
    """
    if jax.default_backend() == "cpu":
        return _ITEM_ENTRIES_CPU
    return _accelerator_item_entries(jax.default_backend(), itemsize)


@cache
def _accelerator_item_entries(backend: str, itemsize: int) -> int:
    dev = jax.devices(backend)[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception as err:  # a backend without the query raises; say so, do not guess quietly
        stats = {}
        why = f"memory_stats() raised {type(err).__name__}: {err}"
    else:
        why = "memory_stats() reports no bytes_limit"
    free = int(stats.get("bytes_limit", 0)) - int(stats.get("bytes_in_use", 0))
    if free <= 0:
        print(f"symsweep kernels: {dev.device_kind} ({backend}): {why}; work items of "
              f"{_ITEM_ENTRIES_GPU} numbers per array (the fallback). If the device runs out "
              "of memory, lower tile_memory_bytes", file=sys.stderr, flush=True)
        return _ITEM_ENTRIES_GPU
    lo, hi = _ITEM_ENTRIES_ACCEL
    fit = int(free * _ITEM_MEMORY_FRACTION) // (16 * itemsize)
    return max(lo, min(hi, 1 << max(0, fit.bit_length() - 1)))


def _item_rows_offsets(hw: int, n_rows: int) -> tuple[int, int]:
    """(rb, dc): rows and offsets of one full-covariance work item for this backend.

    An item holds about a dozen arrays of rb * dc * hw numbers; on CPU they should stay in the
    caches, on an accelerator an item should be large enough to fill the device.
    """
    cpu = jax.default_backend() == "cpu"
    entries = item_entries()
    rb = _pow2_divisor(_padded(n_rows), 8 if cpu else 64)
    dc = _divisor_at_most(hw, max(1, entries // (hw * rb)))
    return rb, dc


def _diag_item(hw: int, n_rows: int, n_cols: int) -> tuple[int, int]:
    """(rb, cb): row and column images of one per-pixel work item (rb * cb * hw numbers).

    n_cols: the column count of the call (cb divides it); n_rows is padded to `_PAD`."""
    pairs = max(1, item_entries() // hw)
    side = 1 << max(0, int(math.log2(pairs)) // 2)
    cb = _pow2_divisor(n_cols, side)
    rb = _pow2_divisor(_padded(n_rows), max(1, pairs // cb))
    return rb, cb


def host_threads() -> int:
    """Threads one `kernel_tile` uses on a CPU backend: ``OMP_NUM_THREADS`` when set (the
    orchestrator sets it to a trial's CPU resource), else the CPUs this process may run on;
    1 on an accelerator (one device call already fills it)."""
    if jax.default_backend() != "cpu":
        return 1
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            print(f"symsweep kernels: ignoring OMP_NUM_THREADS={env!r} (not an integer)",
                  file=sys.stderr)
    return max(1, len(os.sched_getaffinity(0)))


def _column_parts(n_cols: int, threads: int) -> list[tuple[int, int]]:
    """Split n_cols into at most `threads` contiguous ranges of about equal size, with bounds
    at multiples of 4 (n_cols is a multiple of `_PAD`), so that per-pixel work items of 4
    columns still divide every range."""
    n = max(1, min(threads, n_cols))
    unit = 4 if n_cols % 4 == 0 else 1
    bounds = [min(n_cols, unit * round(i * n_cols / n / unit)) for i in range(n)] + [n_cols]
    return [(b0, b1) for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True) if b1 > b0]


@cache
def _pool(n: int) -> ThreadPoolExecutor:
    """A process-wide pool of n threads for the column parts of a tile (created once)."""
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="symsweep-kernel")


def _pad_rows(x: np.ndarray, same: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad x (N, ...) and same (N, K) along axis 0 to a multiple of m (repeats, never 'same')."""
    pad = (-x.shape[0]) % m
    if not pad:
        return x, same
    return (np.concatenate([x, np.repeat(x[:1], pad, 0)]),
            np.concatenate([same, np.zeros((pad, same.shape[1]), bool)]))


def _dtype_context(dtype: Any):
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return jax.enable_x64(True)
    if dtype != np.float32:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
    return _nullcontext()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def kernel_tile(
    archs: Sequence[str],
    x_rows: np.ndarray,
    x_cols: np.ndarray,
    *,
    depth: int = 8,
    w_var: float = 2.0,
    b_var: float = 0.01,
    dtype: Any = np.float32,
    threads: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """NNGP and NTK of every arch in archs between x_rows (R, H, W, C) and x_cols (Cn, H, W, C).

    A plain function of arrays (the unit the orchestrator ships as a task and caches).
    threads: host threads the tile's columns are split over (default `host_threads()`; 1 on an
    accelerator); the result does not depend on it beyond float rounding.
    Returns {arch: {"nngp": (R, Cn), "ntk": (R, Cn)}} numpy arrays of dtype.
    One propagation of the conv stack serves every requested conv arch: if any of gap/lap4/lap8
    is requested the full covariance is propagated and vec/lcn are read from its diagonal;
    otherwise vec/lcn use the cheaper per-pixel propagation. fcn is its own (scalar) recursion.
    """
    archs = _check_archs(archs)
    xr = _check_images(x_rows, "x_rows")
    xc = _check_images(x_cols, "x_cols")
    if xr.shape[1:] != xc.shape[1:]:
        raise DataError(
            f"x_rows and x_cols differ in image shape: {xr.shape[1:]} vs {xc.shape[1:]}"
        )
    if depth < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}")
    n_rows, n_cols = xr.shape[0], xc.shape[0]
    h, wd = xr.shape[1], xr.shape[2]
    out: dict[str, dict[str, np.ndarray]] = {}
    if n_rows == 0 or n_cols == 0:
        empty = np.zeros((n_rows, n_cols), np.dtype(dtype))
        return {a: {"nngp": empty.copy(), "ntk": empty.copy()} for a in archs}
    same = _same_images(xr, xc)
    xr, same = _pad_rows(xr, same, _PAD)
    xc, same_t = _pad_rows(xc, same.T, _PAD)
    same = same_t.T
    with _dtype_context(dtype):
        dt = jnp.dtype(dtype)
        w = jnp.asarray(w_var, dt)
        b = jnp.asarray(b_var, dt)
        dep = jnp.asarray(depth, jnp.int32)
        jxr = jnp.asarray(xr, dt)
        parts = _column_parts(xc.shape[0], host_threads() if threads is None else threads)

        def by_parts(fn: Callable[[Array, Array], Array]) -> np.ndarray:
            """fn(xc part, same part) -> (..., R, part) on every column part, one thread each,
            concatenated along the last axis. XLA runs a compiled loop (lax.map / scan / while)
            on one thread, so the parts are what keeps every core of the host busy."""
            def run(se: tuple[int, int]) -> np.ndarray:
                with _dtype_context(dtype):  # jax's x64 switch is per thread
                    return np.asarray(fn(jnp.asarray(xc[se[0]:se[1]], dt),
                                         jnp.asarray(same[:, se[0]:se[1]])))
            if len(parts) == 1:
                return run(parts[0])
            return np.concatenate(list(_pool(len(parts)).map(run, parts)), axis=-1)

        if "fcn" in archs:
            xrf = jxr.reshape(len(xr), -1)
            r = by_parts(lambda xcp, sp: _fcn_tile(xrf, xcp.reshape(len(xcp), -1), sp, w, b,
                                                   dep))
            out["fcn"] = {"nngp": r[0], "ntk": r[1]}
        full = [a for a in archs if a in _FULL]
        diag = [a for a in archs if a in _DIAG]
        if full:
            conv = full + diag
            jwts = jnp.asarray(np.stack([readout_weights(a, h, wd) for a in conv]), dt)
            jidx = jnp.asarray(_offset_index(h, wd))
            rb, dc = _item_rows_offsets(h * wd, n_rows)
            r = by_parts(lambda xcp, sp: _full_tile(jxr, xcp, sp, w, b, dep, jwts, jidx,
                                                    rb=rb, dc=dc))
            for i, a in enumerate(conv):
                out[a] = {"nngp": r[i, 0], "ntk": r[i, 1]}
        elif diag:
            def diag_part(xcp: Array, sp: Array) -> Array:
                rb, cb = _diag_item(h * wd, n_rows, xcp.shape[0])
                return _diag_tile(jxr, xcp, sp, w, b, dep, rb=rb, cb=cb)

            r = by_parts(diag_part)
            for a in diag:
                out[a] = {"nngp": r[0], "ntk": r[1]}
    return {a: {k: np.array(v[:n_rows, :n_cols], copy=True) for k, v in out[a].items()}
            for a in archs}


def _path(archs: Sequence[str]) -> str:
    if any(a in _FULL for a in archs):
        return "full"
    if any(a in _DIAG for a in archs):
        return "diag"
    return "fcn"


def tile_bytes(
    n_rows: int, n_cols: int, *, archs: Sequence[str], image_shape: Sequence[int],
    itemsize: int = 4,
) -> int:
    """Estimated peak memory (bytes) of one `kernel_tile` call of n_rows x n_cols pairs."""
    archs = _check_archs(archs)
    h, w, c = (int(s) for s in image_shape)
    hw, d = h * w, h * w * c
    inputs = (n_rows + n_cols) * d * itemsize
    total = inputs + 16 * n_rows * n_cols * itemsize  # outputs and (R, Cn) temporaries
    if "fcn" in archs:
        total += 10 * n_rows * n_cols * itemsize
    path = _path(archs)
    if path == "diag":
        total += 14 * n_rows * n_cols * hw * itemsize
    elif path == "full":
        n_r = sum(a in _FULL or a in _DIAG for a in archs)
        rb, dc = _item_rows_offsets(hw, n_rows)
        total += (n_r * hw * hw + hw * hw) * itemsize + 4 * hw * hw  # readout weights, index
        total += 16 * rb * dc * hw * itemsize + 2 * hw * dc * c * itemsize  # one work item
    return int(total)


def plan_tiles(
    n_rows: int,
    n_cols: int,
    *,
    archs: Sequence[str],
    image_shape: Sequence[int],
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    symmetric: bool = False,
    itemsize: int = 4,
    max_side: int | None = None,
) -> list[tuple[int, int, int, int]]:
    """Cover an n_rows x n_cols kernel matrix with tiles (r0, r1, c0, c1) (half-open ranges).

    Tiles are squares of the largest side (at most max_side, default per path: fcn 8192,
    vec/lcn 2048, gap/lap 128) whose `tile_bytes` estimate fits in memory_bytes. With
    symmetric=True (x2 is x1, n_rows == n_cols) only tiles on or above the diagonal (c0 >= r0)
    are returned; the lower triangle is their transpose.
    """
    archs = _check_archs(archs)
    if symmetric and n_rows != n_cols:
        raise ConfigError(f"symmetric tiling needs a square matrix, got {n_rows} x {n_cols}")
    cap = max_side or _MAX_SIDE[_path(archs)]
    side = max(1, min(cap, max(n_rows, n_cols, 1)))

    def fits(s: int) -> bool:
        return tile_bytes(s, s, archs=archs, image_shape=image_shape,
                          itemsize=itemsize) <= memory_bytes

    while side > 1 and not fits(side):
        side = max(1, side * 3 // 4)
    if not fits(side):
        need = tile_bytes(1, 1, archs=archs, image_shape=image_shape, itemsize=itemsize)
        raise ConfigError(f"memory_bytes={memory_bytes} is below the {need} bytes one pair "
                          "needs; raise memory_bytes")
    tiles = []
    for r0 in range(0, n_rows, side):
        for c0 in range(0, n_cols, side):
            if symmetric and c0 + side <= r0:
                continue
            tiles.append((r0, min(r0 + side, n_rows), c0, min(c0 + side, n_cols)))
    return tiles


def _default_map(fn: Callable[..., Any], kwargs_list: list[dict]) -> list:
    return [fn(**kw) for kw in kwargs_list]


def _accepts_on_result(map_tiles: Callable[..., Any]) -> bool:
    """Whether map_tiles takes an ``on_result`` keyword (streams results instead of a list)."""
    import inspect

    try:
        params = inspect.signature(map_tiles).parameters
    except (TypeError, ValueError):  # builtins / C callables: assume the plain list interface
        return False
    return "on_result" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _stream_map(fn: Callable[..., Any], kwargs_list: list[dict], *,
                on_result: Callable[[int, Any], None], progress: bool = False) -> list:
    """The in-process map: each tile is handed to on_result as soon as it is computed and not
    kept, so at most one tile result is alive at a time."""
    for i, kw in enumerate(kwargs_list):
        on_result(i, fn(**kw))
        if progress:
            print(f"kernel tiles {i + 1}/{len(kwargs_list)}", file=sys.stderr, flush=True)
    return [None] * len(kwargs_list)


def _mirror_diagonal_block(block: np.ndarray) -> None:
    """Copy the strict upper triangle of a square block onto its lower triangle, in place.

    Uses indices of the block only (O(side^2)), never of the whole matrix."""
    iu = np.triu_indices(block.shape[0], 1)
    block[iu[1], iu[0]] = block[iu]


def kernel_matrices(
    archs: Sequence[str],
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    depth: int = 8,
    w_var: float = 2.0,
    b_var: float = 0.01,
    dtype: Any = np.float32,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    map_tiles: Callable[..., list] | None = None,
    progress: bool = False,
    max_side: int | None = None,
    assemble: Sequence[str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """NNGP and NTK matrices for several archs, computed tile by tile.

    x1 (N1, H, W, C), x2 (N2, H, W, C) or None (x1 with itself: only the upper triangle of tiles
    is computed; off-diagonal tiles are written with their transpose, diagonal tiles are
    mirrored in place). map_tiles(fn, list_of_kwargs) -> list of fn(**kwargs) results lets the
    caller run the tiles elsewhere (e.g. as Ray tasks); the default is a plain loop. If
    map_tiles also takes ``on_result=callback`` (as `orchestrator.tiles.TileMapper` does), it
    must call ``callback(i, result_i)`` once per tile as results arrive (any order); each tile is
    then written into the preallocated output and dropped, so the peak memory is the output
    plus about one tile. A map_tiles without it returns the whole list first (all tile results
    alive at once: about twice the output).
    max_side caps the tile side (see `plan_tiles`): a fixed side makes the tiles of a prefix
    x1[:m] a subset of those of x1[:2m] (when side divides m), so nested training sets share
    cached tiles (learning curves).
    assemble: the archs whose matrices are returned (default: all of archs). Every tile still
    computes all of ``archs`` (and map_tiles may cache them whole: a gap cell computes
    gap + lap4 + lap8 from one propagation so that its sibling cells hit the tile cache), but
    only the assembled archs get (N1, N2) outputs.
    Returns {arch: {"nngp": (N1, N2), "ntk": (N1, N2)}} numpy arrays of dtype for each
    assembled arch.
    """
    archs = _check_archs(archs)
    keep = archs if assemble is None else _check_archs(assemble)
    if not set(keep) <= set(archs):
        raise ConfigError(f"assemble={list(keep)} must be a subset of archs={list(archs)}")
    x1 = _check_images(x1, "x1")
    symmetric = x2 is None
    x2a = x1 if symmetric else _check_images(x2, "x2")
    if x1.shape[1:] != x2a.shape[1:]:
        raise DataError(f"x1 and x2 differ in image shape: {x1.shape[1:]} vs {x2a.shape[1:]}")
    n1, n2 = x1.shape[0], x2a.shape[0]
    tiles = plan_tiles(n1, n2, archs=archs, image_shape=x1.shape[1:], memory_bytes=memory_bytes,
                       symmetric=symmetric, itemsize=np.dtype(dtype).itemsize,
                       max_side=max_side)
    kwargs = [dict(archs=archs, x_rows=x1[r0:r1], x_cols=x2a[c0:c1], depth=depth, w_var=w_var,
                   b_var=b_var, dtype=dtype) for r0, r1, c0, c1 in tiles]
    out = {a: {k: np.zeros((n1, n2), np.dtype(dtype)) for k in KERNEL_INFERENCES} for a in keep}
    placed = [False] * len(tiles)

    def place(i: int, res: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        r0, r1, c0, c1 = tiles[i]
        if placed[i]:
            raise RuntimeError(f"map_tiles delivered tile {i} twice")
        placed[i] = True
        for a in keep:
            for k in KERNEL_INFERENCES:
                m = out[a][k]
                m[r0:r1, c0:c1] = res[a][k]
                if not symmetric:
                    continue
                if c0 == r0:
                    # a diagonal tile is computed whole; its upper triangle is kept so the
                    # result is exactly symmetric ((i, j) and (j, i) differ by float rounding)
                    _mirror_diagonal_block(m[r0:r1, c0:c1])
                else:
                    m[c0:c1, r0:r1] = res[a][k].T

    if map_tiles is None:
        _stream_map(kernel_tile, kwargs, on_result=place, progress=progress)
    elif _accepts_on_result(map_tiles):
        map_tiles(kernel_tile, kwargs, on_result=place)
    else:
        results = map_tiles(kernel_tile, kwargs)
        if len(results) != len(tiles):
            raise RuntimeError(f"map_tiles returned {len(results)} results for {len(tiles)} "
                               "tiles")
        for i in range(len(results)):
            place(i, results[i])
            results[i] = None  # drop each tile once written
    missing = placed.count(False)
    if missing:
        raise RuntimeError(f"map_tiles delivered {len(tiles) - missing} of {len(tiles)} tiles")
    return out


def kernel_matrix(
    arch: str,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    depth: int = 8,
    w_var: float = 2.0,
    b_var: float = 0.01,
    dtype: Any = np.float32,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    map_tiles: Callable[..., list] | None = None,
    max_side: int | None = None,
) -> dict[str, np.ndarray]:
    """{"nngp": (N1, N2), "ntk": (N1, N2)} of one arch (see `kernel_matrices`)."""
    return kernel_matrices([arch], x1, x2, depth=depth, w_var=w_var, b_var=b_var, dtype=dtype,
                           memory_bytes=memory_bytes, map_tiles=map_tiles,
                           max_side=max_side)[arch]
