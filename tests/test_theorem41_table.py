"""The Theorem 4.1 table itself: its rows as the paper states them (Sec. 4, Theorem 4.1), and
the consistency between finite and infinite width that the theorem implies."""

import pytest

from workers.errors import ConfigError
from workers.theorem41 import equivalence_key, invariant_transforms, is_invariant
from workers.vocab import ARCHS, FULL_COV_ARCHS, TRANSFORMS


def test_rows_as_the_paper_states_them():
    assert invariant_transforms("fcn", infinite=False) == set(TRANSFORMS)
    assert invariant_transforms("lcn", infinite=False) == {
        "identity", "shared_rotation", "pixel_rotation"}
    assert invariant_transforms("vec", infinite=False) == {"identity", "shared_rotation"}
    assert invariant_transforms("vec", infinite=True) == {
        "identity", "shared_rotation", "pixel_rotation"}
    for arch in FULL_COV_ARCHS:
        for infinite in (False, True):
            assert invariant_transforms(arch, infinite=infinite) == {
                "identity", "shared_rotation"}


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_and_shared_rotation_are_always_symmetries(arch):
    """O(3) (x) I_d is inside every architecture's group, at every width."""
    for infinite in (False, True):
        assert {"identity", "shared_rotation"} <= invariant_transforms(arch, infinite=infinite)


@pytest.mark.parametrize("arch", ARCHS)
def test_infinite_width_is_at_least_as_symmetric(arch):
    assert invariant_transforms(arch, infinite=False) <= invariant_transforms(arch, infinite=True)


def test_equivalence_keys():
    assert equivalence_key("fcn", "global_rotation", infinite=True) == ("fcn", "identity")
    assert equivalence_key("lcn", "pixel_rotation", infinite=True) == ("vec", "identity")
    assert equivalence_key("lcn", "permutation", infinite=True) == ("vec", "permutation")
    assert equivalence_key("lcn", "permutation", infinite=False) == ("lcn", "permutation")
    assert equivalence_key("vec", "pixel_rotation", infinite=False) == ("vec", "pixel_rotation")
    assert equivalence_key("gap", "shared_rotation", infinite=True) == ("gap", "identity")
    assert is_invariant("fcn", "permutation", infinite=False)


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="unknown arch 'cnn'"):
        invariant_transforms("cnn", infinite=True)
    with pytest.raises(ConfigError, match="unknown transform 'flip'"):
        equivalence_key("fcn", "flip", infinite=True)
