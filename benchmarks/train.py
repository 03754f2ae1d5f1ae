"""Benchmark the SGD worker: steps/s of symsweep's training loop against a bare hand-written jit
loop of the same model, side by side, per arch at the paper's widths; and eta_0 per arch on a
real CIFAR-10 sample with the time its estimate takes.

    .venv/bin/python benchmarks/train.py --data-dir ../shared/data            # all archs
    .venv/bin/python benchmarks/train.py --archs fcn lcn --steps fcn=400 lcn=20
    .venv/bin/python benchmarks/train.py --quick     # seconds: fcn, 8x8, width 4, 2 steps

Both loops run the same model, loss (1/(2KB) sum |f - y|^2 + lambda/2 |theta|^2, nn_plus
settings), optimiser (optax SGD, momentum 0.9), batch 40 and batch order; each is compiled and
warmed up first, then timed in alternation (bare, symsweep, bare, symsweep, ...) so that load
from other processes hits both alike; the table reports the best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workers.eta0 import estimate_eta0
from workers.models import count_params, init_params, make_model
from workers.train import Trainer
from workers.vocab import ARCHS, PAPER_WIDTHS

# default step counts: a few seconds to a minute per timed repeat on 2 CPU cores
DEFAULT_STEPS = {"fcn": 100, "lcn": 4, "vec": 2, "gap": 2, "lap4": 2, "lap8": 2}
# --quick: the same loops, eta_0 estimate and checks at tiny sizes (seconds): fcn (any arch
# with --archs), 8x8 synthetic images, width 4, depth 2
QUICK = dict(archs=["fcn"], steps=2, repeats=1, image_size=8, train_size=80,
             eta0_samples=4, width=4, depth=2)


def load_images(data_dir: str | None, n: int, image_size: int) -> tuple[np.ndarray, np.ndarray,
                                                                         str]:
    """(x (n, S, S, 3), y (n, 10), source) from CIFAR-10 if available, else synthetic."""
    from workers.data import build_dataset

    cfg = dict(train_size=n, val_size=0, test_size=10, image_size=image_size)
    if data_dir:
        ds = build_dataset({**cfg, "dataset": "cifar10", "data_dir": data_dir})
        return ds.x_train, ds.y_train, "cifar10"
    ds = build_dataset({**cfg, "dataset": "synthetic"})
    return ds.x_train, ds.y_train, "synthetic"


def bare_loop(model, x, y, idx, *, lr, l2, momentum=0.9, loop="device"):
    """The reference: plain jit-compiled SGD over precomputed batch indices idx (S, B).

    loop="device": one `fori_loop` over all S steps in one compiled call. loop="host": a
    compiled step called S times from Python (the only fast form for convolutions on XLA's
    CPU backend, see `workers.train.Trainer`).
    """
    tx = optax.sgd(lr, momentum=momentum)

    def loss(p, xb, yb):
        f = model.apply({"params": p}, xb)
        sq = sum(jnp.sum(p_ ** 2) for p_ in jax.tree_util.tree_leaves(p))
        return 0.5 * jnp.mean((f - yb) ** 2) + 0.5 * l2 * sq

    def step(p, o, x, y, ix):
        g = jax.grad(loss)(p, x[ix], y[ix])
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    if loop == "host":
        jstep = jax.jit(step, donate_argnums=(0, 1))

        def run(params, opt_state, x, y, idx):
            for i in range(idx.shape[0]):
                params, opt_state = jstep(params, opt_state, x, y, idx[i])
            return params, opt_state
        return run, tx

    @jax.jit
    def run(params, opt_state, x, y, idx):
        def body(i, c):
            p, o = c
            return step(p, o, x, y, idx[i])
        return jax.lax.fori_loop(0, idx.shape[0], body, (params, opt_state))

    return run, tx


def _block(tree):
    jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def bench_arch(arch: str, x: np.ndarray, y: np.ndarray, steps: int, repeats: int,
               eta0_samples: int, eta0_inits: int, loop: str = "device",
               width: int | None = None, depth: int = 8) -> dict:
    """One arch's row: eta_0 and its time, both loops' steps/s and CPU s/step, overheads.
    ``width`` None: the paper's width for the arch (`PAPER_WIDTHS`)."""
    width = PAPER_WIDTHS[arch] if width is None else width
    model = make_model(arch, width, depth=depth)
    params = init_params(model, 0, x.shape[1:])
    out = {"arch": arch, "width": width, "depth": depth, "params": count_params(params),
           "steps": steps}

    t0 = time.perf_counter()
    est = estimate_eta0(model, x[:eta0_samples], inits=eta0_inits, seed=0)
    out.update(eta0=est["eta0"], eta0_s=time.perf_counter() - t0, eta0_n=est["n"],
               eta0_inits=eta0_inits, lambda_max=est["lambda_max"])
    lr, l2 = 8 * est["eta0"], 1e-7

    tr = Trainer(model, x, y, lr=lr, batch_size=40, momentum=0.9, l2=l2, seed=0,
                 diverge_loss=float("inf"), loop=loop)
    idx = jnp.asarray(np.stack([tr.batch_indices(s) for s in range(steps)]))
    bare, tx = bare_loop(model, tr.x, tr.y, idx, lr=lr, l2=l2, loop=tr.loop)
    out["loop"] = tr.loop

    # compile + warm up both (one full run each, not timed)
    t = time.perf_counter()
    st, _ = tr.run(tr.init_state(params), 0, steps)
    _block(st)
    out["compile_symsweep_s"] = time.perf_counter() - t
    p0 = jax.tree_util.tree_map(jnp.array, params)
    t = time.perf_counter()
    pb, _ = bare(p0, tx.init(p0), tr.x, tr.y, idx)
    _block(pb)
    out["compile_bare_s"] = time.perf_counter() - t
    # same trajectory (same steps, same batches): a check that both time the same work
    out["max_param_diff"] = float(max(
        np.max(np.abs(np.asarray(a) - np.asarray(b)))
        for a, b in zip(jax.tree_util.tree_leaves(st["params"]), jax.tree_util.tree_leaves(pb),
                        strict=True)))

    # wall time and process CPU time (all threads): on a shared machine the CPU time is the
    # stable measure of the work done, the wall time depends on what else runs
    wall = {"sym": [], "bare": []}
    cpu = {"sym": [], "bare": []}
    for _ in range(repeats):
        p = jax.tree_util.tree_map(jnp.array, params)
        o = tx.init(p)
        t, c = time.perf_counter(), time.process_time()
        _block(bare(p, o, tr.x, tr.y, idx))
        wall["bare"].append(time.perf_counter() - t)
        cpu["bare"].append(time.process_time() - c)
        state = tr.init_state(params)
        t, c = time.perf_counter(), time.process_time()
        state, info = tr.run(state, 0, steps)     # includes the host sync for info
        _block(state)
        wall["sym"].append(time.perf_counter() - t)
        cpu["sym"].append(time.process_time() - c)
    out["symsweep_steps_s"] = steps / min(wall["sym"])
    out["bare_steps_s"] = steps / min(wall["bare"])
    out["symsweep_cpu_s_per_step"] = min(cpu["sym"]) / steps
    out["bare_cpu_s_per_step"] = min(cpu["bare"]) / steps
    out["overhead_wall_pct"] = 100.0 * (min(wall["sym"]) / min(wall["bare"]) - 1.0)
    out["overhead_cpu_pct"] = 100.0 * (min(cpu["sym"]) / min(cpu["bare"]) - 1.0)
    # each repeat times bare then symsweep back to back: the median of those paired ratios is
    # the estimate least moved by load that comes and goes
    out["overhead_cpu_paired_pct"] = 100.0 * (float(np.median(
        np.asarray(cpu["sym"]) / np.asarray(cpu["bare"]))) - 1.0)
    out["wall"], out["cpu"] = wall, cpu
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=None, help="default: all (--quick: fcn)")
    ap.add_argument("--steps", nargs="*", default=[], help="per-arch step counts, e.g. fcn=400")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 source (else synthetic data)")
    ap.add_argument("--widths", nargs="*", default=[],
                    help="per-arch widths, e.g. gap=32 fcn=256 (default: the paper's)")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--eta0-samples", type=int, default=16)
    ap.add_argument("--eta0-inits", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--loop", default="auto", choices=["auto", "device", "host"],
                    help="loop mode of both symsweep's Trainer and the bare loop: device = all "
                         "steps in one compiled loop, host = one compiled step per call; auto "
                         "(train()'s default) is host on CPU, where XLA runs convolutions inside "
                         "loops ~25x slower, and device elsewhere")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: fcn (or --archs), 8x8 synthetic images, width 4, depth 2, "
                         "2 steps, 1 repeat (the same loops and checks; numbers say nothing)")
    a = ap.parse_args(argv)
    depth = a.depth
    try:
        widths = {k: int(v) for k, v in (w.split("=") for w in a.widths)}
    except ValueError:
        ap.error(f"--widths {' '.join(a.widths)}: give ARCH=INT, e.g. gap=32")
    if a.quick:
        if a.data_dir or a.json:
            ap.error("--quick runs on synthetic data and writes no file: drop --data-dir/--json")
        q = QUICK
        a.archs = a.archs or q["archs"]
        a.repeats, a.image_size, a.train_size = q["repeats"], q["image_size"], q["train_size"]
        a.eta0_samples, a.eta0_inits = q["eta0_samples"], 1
        a.steps = [f"{arch}={q['steps']}" for arch in a.archs]
        widths, depth = {arch: q["width"] for arch in a.archs}, q["depth"]
    a.archs = a.archs or list(ARCHS)
    steps = dict(DEFAULT_STEPS)
    steps.update({k: int(v) for k, v in (s.split("=") for s in a.steps)})
    x, y, source = load_images(a.data_dir, a.train_size, a.image_size)
    print(f"# data: {source} {x.shape}, backend {jax.default_backend()}, "
          f"devices {jax.devices()}", flush=True)
    rows = []
    hdr = ("| arch | loop | width | params | steps | symsweep steps/s (wall) | "
           "bare steps/s (wall) | overhead wall | CPU s/step symsweep | CPU s/step bare | "
           "overhead CPU (min; paired median) | eta_0 | eta_0 time (n, inits) |")
    print(hdr + "\n|" + "---|" * 13, flush=True)
    for arch in a.archs:
        r = bench_arch(arch, x, y, steps[arch], a.repeats, a.eta0_samples, a.eta0_inits,
                       a.loop, width=widths.get(arch), depth=depth)
        rows.append(r)
        print(f"| {arch} | {r['loop']} | {r['width']} | {r['params']:,} | {r['steps']} | "
              f"{r['symsweep_steps_s']:.3g} | {r['bare_steps_s']:.3g} | "
              f"{r['overhead_wall_pct']:+.1f}% | {r['symsweep_cpu_s_per_step']:.3g} | "
              f"{r['bare_cpu_s_per_step']:.3g} | {r['overhead_cpu_pct']:+.1f}%; "
              f"{r['overhead_cpu_paired_pct']:+.1f}% | "
              f"{r['eta0']:.4g} | {r['eta0_s']:.0f} s "
              f"({r['eta0_n']}, {r['eta0_inits']}) |", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"source": source, "shape": list(x.shape), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
