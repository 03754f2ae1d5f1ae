"""Theorem 4.1 of Xiao & Pennington (2022) as one table: which transforms each learning
algorithm is invariant to, and so which cells of a sweep are equal.

With i.i.d. Gaussian initialisation, SGD-trained networks (finite width) and kernel regression
with their NNGP / NTK (infinite width) are invariant under (docs/protocol.md, "Theorem 4.1"):

| arch | finite width (nn, nn_plus) | infinite width (ntk, nngp) |
|---|---|---|
| fcn | O(3d): all five transforms | O(3d): all five |
| lcn | O(3)^d: identity, shared, pixel rotation | O(3)^d |
| vec | O(3) (x) I_d: identity, shared rotation | O(3)^d (VEC_inf = LCN_inf) |
| gap, lap4, lap8 | O(3) (x) I_d | O(3) (x) I_d |

Three things derive from this table: the de-duplication of equal kernel cells
(`orchestrator.spec`), the first-layer pre-composition that proves the finite-width rows
(`workers.models.precompose_first_layer`), and the tests of both against the kernel engine and
the trainer (tests/test_theorem41*.py, tests/test_kernels_symmetry.py).
"""

from __future__ import annotations

from workers.errors import ConfigError
from workers.vocab import ARCHS, FULL_COV_ARCHS, TRANSFORMS

# The groups, as sets of the transforms (by name) that each contains.
O3_SHARED = frozenset({"identity", "shared_rotation"})                   # O(3) (x) I_d
O3_PER_PIXEL = O3_SHARED | {"pixel_rotation"}                            # O(3)^d
O3D = frozenset(TRANSFORMS)                                              # O(3d) (P(3d) inside)

_FINITE: dict[str, frozenset[str]] = {
    "fcn": O3D, "lcn": O3_PER_PIXEL, "vec": O3_SHARED,
    **{a: O3_SHARED for a in FULL_COV_ARCHS},
}
_INFINITE: dict[str, frozenset[str]] = {**_FINITE, "vec": O3_PER_PIXEL}
# At infinite width lcn and vec have the same kernel: both are reported as vec.
_INFINITE_ARCH = {"lcn": "vec"}


def _check(arch: str, transform: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if transform not in TRANSFORMS:
        raise ConfigError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")


def invariant_transforms(arch: str, *, infinite: bool) -> frozenset[str]:
    """The transforms (names) that leave ``arch``'s predictions unchanged in distribution:
    at infinite width (``infinite=True``: ntk / nngp) or finite width (nn / nn_plus)."""
    _check(arch, "identity")
    return (_INFINITE if infinite else _FINITE)[arch]


def is_invariant(arch: str, transform: str, *, infinite: bool) -> bool:
    """True when training ``arch`` on tau(D) equals training it on D (Theorem 4.1)."""
    _check(arch, transform)
    return transform in invariant_transforms(arch, infinite=infinite)


def equivalence_key(arch: str, transform: str, *, infinite: bool) -> tuple[str, str]:
    """Canonical (arch, transform) of a cell: two cells with the same key (and the same other
    settings) have equal results. The transform maps to ``identity`` when the algorithm is
    invariant to it; at infinite width ``lcn`` maps to ``vec``."""
    _check(arch, transform)
    canon_t = "identity" if is_invariant(arch, transform, infinite=infinite) else transform
    canon_a = _INFINITE_ARCH.get(arch, arch) if infinite else arch
    return canon_a, canon_t
