"""workers.kernels against neural-tangents 0.6.5 golden fixtures (tools/make_nt_fixtures.py).

Every arch, both kernels, depths 1-3, two (w_var, b_var) settings, symmetric and cross
(with two column images equal to row images), non-square 8x4 images, and fcn/vec at the
paper's 32x32 depth 8. Relative error per entry <= 1e-5 in float64 and <= 1e-4 in float32.
"""

from pathlib import Path

import numpy as np
import pytest

from workers.kernels import kernel_matrices, kernel_tile

FIX = np.load(Path(__file__).parent / "fixtures" / "nt" / "nt_kernels.npz")
CASES = [str(c) for c in FIX["cases"]]
TOL = {np.float64: 1e-5, np.float32: 1e-4}


def _parse(tag):
    kind, arch, d, w, b = tag.split("_")
    return kind, arch, int(d[1:]), float(w[1:]), float(b[1:])


def _rel(a, ref):
    return float(np.max(np.abs(a - ref) / np.abs(ref)))


def _groups():
    """One kernel_matrices call per (kind, depth, w, b): the conv archs share a propagation."""
    groups = {}
    for tag in CASES:
        kind, arch, d, w, b = _parse(tag)
        groups.setdefault((kind, d, w, b), []).append(arch)
    return sorted(groups.items())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("group", _groups(), ids=lambda g: "{}_d{}_w{}_b{}".format(*g[0]))
def test_matches_neural_tangents(group, dtype):
    (kind, d, w, b), archs = group
    x = {"small": FIX["x1"], "nonsquare": FIX["y1"], "paper": FIX["z1"]}[kind]
    conv = [a for a in archs if a != "fcn"]
    calls = [conv, ["fcn"]] if "fcn" in archs and conv else [archs]
    for call in calls:
        sym = kernel_matrices(call, x, depth=d, w_var=w, b_var=b, dtype=dtype)
        cross = (kernel_matrices(call, x, FIX["x2"], depth=d, w_var=w, b_var=b, dtype=dtype)
                 if kind == "small" else None)
        for arch in call:
            tag = f"{kind}_{arch}_d{d}_w{w:g}_b{b:g}"
            for k in ("nngp", "ntk"):
                assert sym[arch][k].dtype == dtype
                assert _rel(sym[arch][k], FIX[f"{tag}/{k}"]) <= TOL[dtype], (tag, k)
                if cross is not None:
                    assert _rel(cross[arch][k], FIX[f"{tag}/cross_{k}"]) <= TOL[dtype], (tag, k)


def test_float32_self_entries_are_exact_at_rho_one():
    """Image-with-itself entries keep rho = 1 exactly: the float32 diagonal of a depth-3 fcn NTK
    is within float32 rounding of float64 (2e-4 off without the exact-diagonal treatment)."""
    tag = "small_fcn_d3_w2_b0.01"
    r = kernel_matrices(["fcn", "vec"], FIX["x1"], FIX["x2"], depth=3, dtype=np.float32)
    ref = FIX[f"{tag}/cross_ntk"]
    # columns 0 and 1 of x2 are row images 0 and 3
    assert _rel(r["fcn"]["ntk"][[0, 3], [0, 1]], ref[[0, 3], [0, 1]]) < 2e-6


def test_lcn_equals_vec_at_infinite_width():
    """nt's ConvLocal (lcn) and Conv (vec) fixtures agree, and so do ours, exactly."""
    for tag in CASES:
        kind, arch, d, w, b = _parse(tag)
        if arch == "lcn":
            vtag = tag.replace("_lcn_", "_vec_")
            assert _rel(FIX[f"{tag}/ntk"], FIX[f"{vtag}/ntk"]) < 1e-12
    r = kernel_tile(["lcn", "vec", "gap"], FIX["x1"], FIX["x2"], depth=2)
    np.testing.assert_array_equal(r["lcn"]["ntk"], r["vec"]["ntk"])


def test_lap8_equals_gap_on_8x8_and_shared_propagation_matches_single():
    """At 8x8 an 8x8 pool is the global pool; one multi-readout call equals separate calls."""
    x = FIX["x1"]
    multi = kernel_tile(["vec", "gap", "lap4", "lap8"], x, x, depth=2, dtype=np.float64)
    np.testing.assert_allclose(multi["lap8"]["ntk"], multi["gap"]["ntk"], rtol=1e-13)
    for arch in ("vec", "gap", "lap4"):
        single = kernel_tile([arch], x, x, depth=2, dtype=np.float64)
        for k in ("nngp", "ntk"):
            np.testing.assert_allclose(multi[arch][k], single[arch][k], rtol=1e-12)
