"""Theorem 4.1 on infinite-width kernels, against the table in workers/theorem41.py: every group
of cells the table calls equal (and so the de-duplication computes once) has equal kernels, for
all six archs, and every pair it calls different differs by far more than rounding, so neither
the table nor the engine can drift without a test failing.
"""

import itertools

import numpy as np
import pytest

from workers.kernels import kernel_matrices
from workers.theorem41 import equivalence_key, is_invariant
from workers.transforms import make_transform
from workers.vocab import ARCHS, TRANSFORMS

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def kernels():
    """{(arch, transform): {"nngp", "ntk"}} on 5 random 8x8 images, float64, depth 2."""
    rng = np.random.default_rng(41)
    x = rng.standard_normal((5, *SHAPE))
    out = {}
    for name in TRANSFORMS:
        tau = make_transform(name, seed=7, image_shape=SHAPE)
        for arch, k in kernel_matrices(list(ARCHS), tau(x), depth=2, dtype=np.float64).items():
            out[arch, name] = k
    return out


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_theorem_4_1_kernels(kernels, arch, transform):
    for k in ("nngp", "ntk"):
        d = _rel(kernels[arch, transform][k], kernels[arch, "identity"][k])
        if is_invariant(arch, transform, infinite=True):
            assert d < 1e-12, (arch, transform, k, d)
        else:
            assert d > 1e-3, (arch, transform, k, d)


def test_every_dedupe_group_has_equal_kernels_and_groups_differ(kernels):
    """The groups `orchestrator.spec` de-duplicates (equal `equivalence_key`) across all six
    archs, lcn = vec at infinite width included."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for cell in itertools.product(ARCHS, TRANSFORMS):
        groups.setdefault(equivalence_key(*cell, infinite=True), []).append(cell)
    assert len(groups) < len(ARCHS) * len(TRANSFORMS)  # the table does merge cells
    assert ("lcn", "permutation") in groups["vec", "permutation"]
    for members in groups.values():
        ref = kernels[members[0]]
        for cell in members[1:]:
            for k in ("nngp", "ntk"):
                assert _rel(kernels[cell][k], ref[k]) < 1e-12, (members[0], cell, k)
    # cells of one arch in different groups differ
    for (_, a), (_, b) in itertools.combinations(groups.items(), 2):
        for cell_a, cell_b in itertools.product(a, b):
            if cell_a[0] == cell_b[0]:
                for k in ("nngp", "ntk"):
                    assert _rel(kernels[cell_a][k], kernels[cell_b][k]) > 1e-3, (cell_a, cell_b)
