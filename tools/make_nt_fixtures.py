"""Write golden NNGP/NTK fixtures from neural-tangents 0.6.5 (the paper's reference code).

Run under the reference environment (it does not import on the project's JAX):

    ../shared/tools/nt-reference-env.sh          # builds /tmp/nt-ref once
    /tmp/nt-ref/bin/python tools/make_nt_fixtures.py [--out tests/fixtures/nt]

``NTREF_TOOLS`` overrides the directory holding ``ntref.py`` (default ``../shared/tools``
beside the project root). Every kernel is computed in float64 with ``nt.stax`` models built
exactly as the paper defines them (see ``stax_model``); the tests in
``tests/test_kernels_fixtures.py`` compare ``workers.kernels`` against these files without
neural-tangents installed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("NTREF_TOOLS", str(ROOT.parent / "shared" / "tools")))

from ntref import jax, stax  # noqa: E402

jax.config.update("jax_enable_x64", True)

ARCHS = ("fcn", "vec", "lcn", "gap", "lap4", "lap8")


def stax_model(arch: str, depth: int, w_var: float, b_var: float):
    """The paper's architectures as neural-tangents stax models (NTK parameterisation)."""
    w_std, b_std = float(np.sqrt(w_var)), float(np.sqrt(b_var))
    if arch == "fcn":
        layers = [stax.Flatten()]
        for _ in range(depth):
            layers += [stax.Dense(512, W_std=w_std, b_std=b_std), stax.Relu()]
        layers += [stax.Dense(10, W_std=w_std, b_std=b_std)]
        return stax.serial(*layers)
    conv = stax.ConvLocal if arch == "lcn" else stax.Conv
    layers = []
    for _ in range(depth):
        layers += [conv(64, (3, 3), padding="CIRCULAR", W_std=w_std, b_std=b_std,
                        parameterization="ntk"), stax.Relu()]
    if arch in ("vec", "lcn"):
        layers += [stax.Flatten()]
    elif arch == "gap":
        layers += [stax.GlobalAvgPool()]
    elif arch.startswith("lap"):
        k = int(arch[3:])
        layers += [stax.AvgPool((k, k), (k, k)), stax.Flatten()]
    else:
        raise ValueError(arch)
    layers += [stax.Dense(10, W_std=w_std, b_std=b_std)]
    return stax.serial(*layers)


def nt_kernels(arch, x1, x2, depth, w_var, b_var):
    _, _, kernel_fn = stax_model(arch, depth, w_var, b_var)
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    return np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "nt"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20221)

    # 8x8x3: six row images; four column images, two of them exact copies of row images
    # (exercises the rho = 1 diagonal inside a non-symmetric tile).
    x1 = rng.standard_normal((6, 8, 8, 3))
    x2 = np.concatenate([x1[[0, 3]], rng.standard_normal((2, 8, 8, 3))])
    # Non-square 8x4 images catch swapped spatial axes.
    y1 = rng.standard_normal((5, 8, 4, 3))
    # 32x32x3, depth 8 (the paper's shape) for the cheap archs.
    z1 = rng.standard_normal((4, 32, 32, 3))

    cases = []
    for w_var, b_var in ((2.0, 0.01), (1.3, 0.25)):
        for depth in (1, 2, 3):
            for arch in ARCHS:
                cases.append(("small", arch, depth, w_var, b_var))
    for arch in ("vec", "gap", "lap4", "fcn"):
        cases.append(("nonsquare", arch, 2, 2.0, 0.01))
    for arch in ("fcn", "vec"):
        cases.append(("paper", arch, 8, 2.0, 0.01))

    data = {"x1": x1, "x2": x2, "y1": y1, "z1": z1}
    names = []
    for kind, arch, depth, w_var, b_var in cases:
        tag = f"{kind}_{arch}_d{depth}_w{w_var:g}_b{b_var:g}"
        if kind == "small":
            a_nngp, a_ntk = nt_kernels(arch, x1, None, depth, w_var, b_var)
            c_nngp, c_ntk = nt_kernels(arch, x1, x2, depth, w_var, b_var)
            data[f"{tag}/cross_nngp"], data[f"{tag}/cross_ntk"] = c_nngp, c_ntk
        elif kind == "nonsquare":
            a_nngp, a_ntk = nt_kernels(arch, y1, None, depth, w_var, b_var)
        else:
            a_nngp, a_ntk = nt_kernels(arch, z1, None, depth, w_var, b_var)
        data[f"{tag}/nngp"], data[f"{tag}/ntk"] = a_nngp, a_ntk
        names.append(tag)
        print(tag, a_nngp.shape, float(a_ntk[0, 0]), flush=True)
    data["cases"] = np.array(names)
    np.savez_compressed(out / "nt_kernels.npz", **data)
    print("wrote", out / "nt_kernels.npz", (out / "nt_kernels.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
