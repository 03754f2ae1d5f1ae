"""eta_0, the base learning rate of the finite networks (docs/protocol.md, "I"), by Lanczos.

The SGD worker (workers/train.py) trains at learning rate c * eta_0 with

    eta_0 = 2 n K / lambda_max(Theta_hat),

Theta_hat = sum_k J_k J_k^T the empirical NTK at initialisation on n training points, traced
(summed) over the K logits, lambda_max averaged over a few initialisations. Numerically this is
neural-tangents' `max_learning_rate(k)` with its default `y_train_size` applied to the kernel
`k` of `empirical_ntk_fn(..., trace_axes=(-1,))` (which divides the trace by K):
2 n / lambda_max(k).
It is about K (1 + momentum) times below the rate where momentum SGD on this loss loses
stability, which matches the paper's remark that 8 eta_0 is still 2-4x below the largest rate
that trains (the per-logit reading 2 n K / lambda_max(k) diverges at 8x within a few steps).
lambda_max is found by Lanczos iteration on NTK-vector products (J J^T u from one
linearisation, never forming J), so it scales to the paper's widths.

Entry point: `estimate_eta0(model, x_sample)`; `ntk_matvec`, `lanczos_max_eig` and the dense
`empirical_ntk` (the reference the tests check the products against) are its parts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workers.models import init_params


@functools.lru_cache(maxsize=16)
def _compiled_ntk_matvec(apply_fn: Callable) -> Callable:
    def mv(params: Any, x: jax.Array, u: jax.Array) -> jax.Array:
        out, f_jvp = jax.linearize(lambda p: apply_fn(p, x), params)
        f_vjp = jax.linear_transpose(f_jvp, params)

        def one(i: jax.Array) -> jax.Array:
            ct = jnp.zeros_like(out).at[:, i].set(u.astype(out.dtype))
            (g,) = f_vjp(ct)
            return f_jvp(g)[:, i]

        # vmap, not lax.map: XLA's CPU backend runs convolutions inside loops ~25x slower
        return jax.vmap(one)(jnp.arange(out.shape[1])).sum(0)

    return jax.jit(mv)


def ntk_matvec(apply_fn: Callable, params: Any, x: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """u (n,) -> Theta_hat u (n,), Theta_hat = sum_k J_k J_k^T the logit-traced empirical NTK
    on x (n, H, W, C), J_k (n, P) the Jacobian of logit k. Each product costs one forward pass
    plus K JVP and K VJP passes; one compilation per (apply_fn, shapes), shared by all inits."""
    mv = _compiled_ntk_matvec(apply_fn)
    return lambda u: mv(params, x, u)


def empirical_ntk(apply_fn: Callable, params: Any, x: jax.Array) -> jax.Array:
    """Dense logit-traced empirical NTK (n, n) from explicit Jacobians (small nets only)."""
    jac = jax.jacrev(lambda p: apply_fn(p, x))(params)          # leaves (n, K, *shape)
    n, k = next(iter(jax.tree_util.tree_leaves(jac))).shape[:2]
    flat = jnp.concatenate([j.reshape(n, k, -1) for j in jax.tree_util.tree_leaves(jac)], -1)
    return jnp.einsum("ikp,jkp->ij", flat, flat)


def lanczos_max_eig(matvec: Callable[[np.ndarray], np.ndarray], n: int, *,
                    max_iter: int = 40, rtol: float = 1e-6, v0: np.ndarray | None = None
                    ) -> float:
    """Largest eigenvalue of a symmetric PSD (n, n) operator given by its products.

    Lanczos with full re-orthogonalisation in float64 on the host; stops when the top Ritz value
    changes by less than rtol (relative) or the Krylov space is exhausted.
    """
    v = np.ones(n) if v0 is None else np.asarray(v0, np.float64)
    v = v / np.linalg.norm(v)
    basis, alphas, betas = [v], [], []
    prev = None
    theta = 0.0
    for it in range(min(max_iter, n)):
        w = np.asarray(matvec(basis[-1]), np.float64)
        alpha = float(w @ basis[-1])
        alphas.append(alpha)
        vs = np.stack(basis)
        w = w - vs.T @ (vs @ w)
        w = w - vs.T @ (vs @ w)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta = float(np.linalg.eigvalsh(t)[-1])
        beta = float(np.linalg.norm(w))
        if prev is not None and abs(theta - prev) <= rtol * abs(theta):
            break
        if beta <= 1e-10 * max(abs(theta), 1e-30) or it == n - 1:
            break
        prev = theta
        betas.append(beta)
        basis.append(w / beta)
    return theta


@functools.lru_cache(maxsize=32)
def _model_apply_fn(model: Any) -> Callable:
    """A stable (cacheable) apply function per model."""
    return lambda p, x: model.apply({"params": p}, x)


def estimate_eta0(model: Any, x_sample: np.ndarray, *, inits: int = 3, seed: int = 0,
                  max_iter: int = 40, rtol: float = 1e-4) -> dict:
    """eta_0 = 2 n K / mean_init lambda_max(Theta_hat) on x_sample (n, H, W, C).

    Returns {"eta0", "lambda_max" (list per init), "n", "seconds"}.
    """
    t0 = time.perf_counter()
    x = jnp.asarray(x_sample, model.param_dtype)
    n = x.shape[0]

    apply_fn = _model_apply_fn(model)
    lams = []
    for i in range(int(inits)):
        params = init_params(model, (int(seed), 10_000 + i), x.shape[1:])
        mv = ntk_matvec(apply_fn, params, x)
        lams.append(lanczos_max_eig(lambda u, mv=mv: np.asarray(mv(jnp.asarray(u, x.dtype))),
                                    n, max_iter=max_iter, rtol=rtol))
    k = model.num_classes
    lam = float(np.mean(lams))
    return {"eta0": 2.0 * n * k / lam, "lambda_max": lams, "n": int(n),
            "seconds": time.perf_counter() - t0}
