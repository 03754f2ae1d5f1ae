"""Monte-Carlo limit: empirical kernels of finite random networks approach the analytic ones.

A minimal numpy forward pass (independent of workers.kernels and workers.models) in the NTK
parameterisation: W ~ N(0, 1), z = sqrt(w_var / fan_in) W x + sqrt(b_var) beta, 3x3 circular
convolutions. The readout expectation over its Gaussian weights is taken exactly
(K = w_var * <features(x), features(x')> / fan_in + b_var), so the remaining error comes from
the finite hidden widths and should shrink like 1/sqrt(width).
"""

import numpy as np
import pytest

from workers.kernels import kernel_matrices

W_VAR, B_VAR, DEPTH = 2.0, 0.01, 2


def _conv_features(rng, x, width, pool):
    """Post-ReLU conv-stack features, pooled for the readout: (N, features)."""
    h = x
    for _ in range(DEPTH):
        cin = h.shape[-1]
        w = rng.standard_normal((9 * cin, width))
        b = rng.standard_normal(width)
        # 3x3 circular conv as patches @ weights: patch (dh, dw) holds x[h + dh - 1, w + dw - 1]
        patches = np.concatenate([np.roll(h, (1 - dh, 1 - dw), axis=(1, 2))
                                  for dh in range(3) for dw in range(3)], axis=3)
        z = patches @ w
        h = np.maximum(np.sqrt(W_VAR / (9 * cin)) * z + np.sqrt(B_VAR) * b, 0.0)
    if pool == "gap":
        return h.mean(axis=(1, 2))
    return h.reshape(h.shape[0], -1)  # vec: flatten


def _fcn_features(rng, x, width):
    h = x.reshape(x.shape[0], -1)
    for _ in range(DEPTH):
        w = rng.standard_normal((h.shape[1], width))
        b = rng.standard_normal(width)
        h = np.maximum(np.sqrt(W_VAR / h.shape[1]) * (h @ w) + np.sqrt(B_VAR) * b, 0.0)
    return h


def _empirical_nngp(arch, rng, x, width):
    f = _fcn_features(rng, x, width) if arch == "fcn" else _conv_features(rng, x, width, arch)
    n_feat = width if arch in ("fcn", "gap") else f.shape[1]
    return W_VAR * (f @ f.T) / n_feat + B_VAR


@pytest.mark.parametrize("arch", ["fcn", "vec", "gap"])
def test_empirical_nngp_converges_like_inverse_sqrt_width(arch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 6, 3))
    exact = kernel_matrices([arch], x, depth=DEPTH, w_var=W_VAR, b_var=B_VAR,
                            dtype=np.float64)[arch]["nngp"]
    widths = [16, 64, 256] if arch != "fcn" else [64, 256, 1024]
    errs = []
    for width in widths:
        sq = [np.sum((_empirical_nngp(arch, np.random.default_rng(s), x, width) - exact) ** 2)
              for s in range(16)]
        errs.append(np.sqrt(np.mean(sq)) / np.linalg.norm(exact))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    # 1/sqrt(width): slope -1/2 (a 16x wider net is ~4x closer); allow Monte-Carlo scatter
    # and the slower start at the smallest widths.
    assert -0.8 < slope < -0.3, (arch, errs, slope)
    assert errs[-1] < errs[0] / 2.5, (arch, errs)
    # The constant is that of 1/sqrt(width) fluctuations (relu products have relative variance
    # ~5 per layer), so the error is a few / sqrt(width), not a plateau from a wrong formula.
    assert errs[-1] < 5.0 / np.sqrt(widths[-1]), (arch, errs)
