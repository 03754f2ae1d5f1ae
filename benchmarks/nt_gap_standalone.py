"""neural-tangents alone, gap at 32x32 (depth 8, CIRCULAR 3x3 convs, w_var 2, b_var 0.01,
NNGP + NTK), outside benchmarks/kernels.py's harness: a cross-check of the reference side's
speed (issue 14 quotes 3.54 pairs/s for it; this machine gives about 0.8). Run it with the
reference environment (../shared/tools/nt-reference-env.sh):

    /tmp/nt-ref/bin/python benchmarks/nt_gap_standalone.py 8 jit      # or: 8 batch

N images give N x N pairs; best of two timed calls after a warm-up call, wall clock.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "shared", "tools"))
from ntref import jax, nt, stax  # noqa: E402  (the reference environment's path first)


def main() -> None:
    n, mode = int(sys.argv[1]), sys.argv[2]
    x = np.random.default_rng(0).standard_normal((n, 32, 32, 3)).astype(np.float32)
    layers = []
    for _ in range(8):
        layers += [stax.Conv(64, (3, 3), padding="CIRCULAR", W_std=2 ** 0.5, b_std=0.1),
                   stax.Relu()]
    kfn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(10, W_std=2 ** 0.5,
                                                                 b_std=0.1))[2]
    if mode == "batch":
        batched = nt.batch(kfn, batch_size=n, store_on_device=False)

        def call():
            return np.asarray(batched(x, x, ("nngp", "ntk")).ntk)
    else:
        jitted = jax.jit(kfn, static_argnames=("get",))

        def call():
            return np.asarray(jitted(x, x, get=("nngp", "ntk"))[1])

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    print(f"nt {mode} N={n}: first {first:.1f}s, best {best:.2f}s, {n * n / best:.3f} pairs/s; "
          f"load {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
