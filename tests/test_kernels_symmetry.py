"""Theorem 4.1 on infinite-width kernels: which transforms leave which kernels unchanged.

fcn: all five transforms; vec and lcn: identity, shared and pixel rotation; gap and lap:
identity and shared rotation. Every non-invariance is asserted to change the kernel by far more
than rounding, so the invariance checks cannot pass vacuously.
"""

import numpy as np
import pytest

from workers.kernels import kernel_matrices
from workers.transforms import TRANSFORMS, make_transform

SHAPE = (8, 8, 3)
ARCHS = ["fcn", "vec", "lcn", "gap", "lap4"]
INVARIANT = {
    "fcn": set(TRANSFORMS),
    "vec": {"identity", "shared_rotation", "pixel_rotation"},
    "lcn": {"identity", "shared_rotation", "pixel_rotation"},
    "gap": {"identity", "shared_rotation"},
    "lap4": {"identity", "shared_rotation"},
}


@pytest.fixture(scope="module")
def kernels():
    rng = np.random.default_rng(41)
    x = rng.standard_normal((5, *SHAPE))
    out = {}
    for name in TRANSFORMS:
        tau = make_transform(name, seed=7, image_shape=SHAPE)
        out[name] = kernel_matrices(ARCHS, tau(x), depth=2, dtype=np.float64)
    return out


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_theorem_4_1_kernels(kernels, arch, transform):
    for k in ("nngp", "ntk"):
        d = _rel(kernels[transform][arch][k], kernels["identity"][arch][k])
        if transform in INVARIANT[arch]:
            assert d < 1e-12, (arch, transform, k, d)
        else:
            assert d > 1e-3, (arch, transform, k, d)
