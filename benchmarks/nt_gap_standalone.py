"""neural-tangents alone, gap at 32x32 (depth 8, CIRCULAR 3x3 convs, w_var 2, b_var 0.01,
NNGP + NTK), outside benchmarks/kernels.py's harness: a cross-check of the reference side's
speed (issue 14 quotes 3.54 pairs/s for it; this machine gives about 0.8). Run it with the
reference environment (../shared/tools/nt-reference-env.sh):

    /tmp/nt-ref/bin/python benchmarks/nt_gap_standalone.py 8 jit      # or: 8 batch
    .venv/bin/python benchmarks/nt_gap_standalone.py --quick          # seconds: N = 2, 8x8

N images give N x N pairs; best of two timed calls after a warm-up call, wall clock.

``--quick`` (what ``make test`` runs) is the same timing at N = 2 on 8x8 images, for both
modes. neural-tangents lives only in its reference environment: when this interpreter cannot
import it, ``--quick`` says so on stdout (SKIPPED) and instead times symsweep's
`workers.kernels.kernel_tile` on the same configuration (the side this script is the
reference for), so the quick run still checks the configuration and the timing code.
"""

import argparse
import os
import sys
import time

import numpy as np

NT_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                        "tools")
DEPTH, W_VAR, B_VAR = 8, 2.0, 0.01


def best_of_two(call) -> tuple[float, float]:
    """(first call's wall s, best of two further calls' wall s)."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return first, best


def nt_call(x: np.ndarray, mode: str):
    """neural-tangents' gap NNGP + NTK of x against itself, as a no-argument call."""
    from ntref import jax, nt, stax  # the reference environment's path first (see main)

    n = x.shape[0]
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Conv(64, (3, 3), padding="CIRCULAR", W_std=W_VAR ** 0.5,
                             b_std=B_VAR ** 0.5), stax.Relu()]
    kfn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(10, W_std=W_VAR ** 0.5,
                                                                 b_std=B_VAR ** 0.5))[2]
    if mode == "batch":
        batched = nt.batch(kfn, batch_size=n, store_on_device=False)

        def call():
            return np.asarray(batched(x, x, ("nngp", "ntk")).ntk)
    else:
        jitted = jax.jit(kfn, static_argnames=("get",))

        def call():
            return np.asarray(jitted(x, x, get=("nngp", "ntk"))[1])
    return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", help="images (N x N pairs)")
    ap.add_argument("mode", nargs="?", choices=("jit", "batch"))
    ap.add_argument("--quick", action="store_true",
                    help="seconds: N = 2, 8x8, both modes; symsweep's side when "
                         "neural-tangents cannot be imported")
    a = ap.parse_args(argv)
    if a.quick:
        runs, size = [(2, "jit"), (2, "batch")], 8
    elif a.n is None or a.mode is None:
        ap.error("give N and a mode (jit or batch), or --quick")
    else:
        if a.n < 1:
            ap.error(f"N must be >= 1, got {a.n}")
        runs, size = [(a.n, a.mode)], 32
    sys.path.insert(0, NT_TOOLS)
    try:
        import ntref  # noqa: F401
        have_nt = True
    except ImportError as err:
        if not a.quick:
            print(f"cannot import neural-tangents ({err}); run this with the reference "
                  "environment (../shared/tools/nt-reference-env.sh)", file=sys.stderr)
            return 2
        have_nt = False
        print(f"SKIPPED the neural-tangents side: {sys.executable} cannot import it ({err}; "
              "../shared/tools/nt-reference-env.sh builds its environment); timing "
              "symsweep's kernel_tile on the same configuration instead", flush=True)
    load = open("/proc/loadavg").read().strip()
    for n, mode in runs:
        x = np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(np.float32)
        if have_nt:
            side, call = f"nt {mode}", nt_call(x, mode)
        else:
            from workers.kernels import kernel_tile

            side = "symsweep kernel_tile"

            def call(x=x):
                return kernel_tile(["gap"], x, x, depth=DEPTH, w_var=W_VAR,
                                   b_var=B_VAR)["gap"]["ntk"]
        first, best = best_of_two(call)
        print(f"{side} N={n} {size}x{size}: first {first:.1f}s, best {best:.2f}s, "
              f"{n * n / best:.3f} pairs/s; load {load}")
        if not have_nt:
            break  # symsweep has no jit/batch modes: one run is the whole check
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
