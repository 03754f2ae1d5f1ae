"""The NTK row of Fig. 2's `cpu` preset on real CIFAR-10, computed directly (no Ray).

    python benchmarks/fig2_cpu_ntk.py --data-dir ../shared/data [--out ntk_row.json]
    python benchmarks/fig2_cpu_ntk.py --quick    # seconds: the same cells on tiny synthetic data

Every NTK cell of ``sweeps/fig2.py --preset cpu`` is expanded from the sweep file itself (same
configs, same class-balanced subsets, same transforms and seeds, diag_reg as the preset fixes
it) and evaluated with the trial worker's own pieces (`workers.data.build_dataset`,
`workers.kernels.kernel_matrices`, `workers.kernel_trial.kernel_metrics`), so the numbers are
the ones `symsweep run sweeps/fig2.py --preset cpu --only inference=ntk` records. The only
difference is scheduling: one process, each transform's gap, lap4 and lap8 assembled from one
full-covariance propagation, vec and lcn from one (they are the same kernel at infinite width),
the transforms in the order identity, shared, pixel rotation, permutation, global rotation.
Results are written (atomically) after every transform, so a partial run leaves what it has.
Prints the NTK row (test accuracy, %) as a markdown table.

``--quick`` (what ``make test`` runs) expands and evaluates the same cells the same way, but on
the deterministic synthetic dataset (no CIFAR-10 needed) at QUICK's sizes, for the transforms
QUICK_TRANSFORMS (one that keeps the pixels, one that moves them), and writes its JSON
into a temporary folder (removed afterwards) unless ``--out`` is given: a check that the
preset, the data builder and the kernel worker still fit together, not a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --quick: each cell's data replaced by this (synthetic images, 8x8, a few of each split)
# (a preset with a validation split keeps one, of QUICK_VAL images)
QUICK = {"dataset": "synthetic", "image_size": 8, "train_size": 20, "test_size": 10}
QUICK_VAL = 10
QUICK_TRANSFORMS = ("identity", "pixel_rotation")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=None,
                    help="JSON results file (default fig2_cpu_ntk.json; --quick: a temporary "
                         "folder's)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: the preset's NTK cells on tiny synthetic data (QUICK)")
    args = ap.parse_args()
    if not args.quick:
        return run(args, args.out or "fig2_cpu_ntk.json", {}, None)
    if args.out:
        return run(args, args.out, QUICK, QUICK_TRANSFORMS)
    with tempfile.TemporaryDirectory(prefix="fig2-cpu-ntk-quick-") as tmp:
        return run(args, str(Path(tmp) / "fig2_cpu_ntk.json"), QUICK, QUICK_TRANSFORMS)


def run(args: argparse.Namespace, out: str, override: dict,
        transforms: tuple[str, ...] | None) -> int:
    """Evaluate every NTK cell (each cell's config updated by ``override``) of ``transforms``
    (None: every transform), write ``out``."""
    import pyarrow.fs as pafs

    from orchestrator.fsio import write_atomic
    from orchestrator.spec import load_sweep
    from workers.data import build_dataset
    from workers.kernel_trial import kernel_metrics
    from workers.kernels import kernel_matrices
    from workers.vocab import TRANSFORMS

    trials = [t for t in load_sweep(ROOT / "sweeps" / "fig2.py").expand("cpu", dedupe=False)
              if t.kind == "kernel" and t.config["inference"] == "ntk"]
    groups = (("fcn",), ("vec", "lcn"), ("gap", "lap4", "lap8"))
    out_path = Path(out).resolve()
    results: dict[str, dict[str, float]] = {}
    print(f"load average before: {open('/proc/loadavg').read().strip()}", file=sys.stderr)
    for transform in transforms or TRANSFORMS:
        for group in groups:
            cells = {t.config["arch"]: t for t in trials
                     if t.config["transform"] == transform and t.config["arch"] in group}
            cfg = dict(cells[group[0]].config, data_dir=args.data_dir, **override)
            if override and cfg.get("val_size"):
                cfg["val_size"] = QUICK_VAL
            for a in group[1:]:  # the group shares data and kernel settings
                other = {k: v for k, v in cells[a].config.items() if k != "arch"}
                if other != {k: v for k, v in cells[group[0]].config.items() if k != "arch"}:
                    raise SystemExit(f"cells {group[0]} and {a} differ beyond the arch")
            t0 = time.time()
            ds = build_dataset(cfg)
            archs = ["vec"] if group == ("vec", "lcn") else list(group)
            kw = dict(depth=int(cfg["depth"]), w_var=float(cfg["w_var"]),
                      b_var=float(cfg["b_var"]), assemble=archs)
            k_tr = kernel_matrices(archs, ds.x_train, None, **kw)
            k_te = kernel_matrices(archs, ds.x_test, ds.x_train, **kw)
            for a in group:
                src = "vec" if a == "lcn" else a
                m = kernel_metrics({"ntk": k_tr[src]["ntk"]}, {"ntk": k_te[src]["ntk"]},
                                   ds.y_train, ds.y_test, ds.labels_train, ds.labels_test,
                                   diag_reg=cfg.get("diag_reg"))["ntk"]
                results[f"{a}/{transform}"] = {"test_acc": m["test_acc"],
                                               "test_mse": m["test_mse"],
                                               "train_size": int(len(ds.x_train)),
                                               "test_size": int(len(ds.x_test)),
                                               "image_size": int(ds.x_train.shape[1]),
                                               "diag_reg": cfg.get("diag_reg"),
                                               "kernel_s": time.time() - t0}
                print(f"{a:5s} {transform:16s} test acc {100 * m['test_acc']:.1f}% "
                      f"({time.time() - t0:.0f} s; load {open('/proc/loadavg').read()[:14]})",
                      file=sys.stderr, flush=True)
            write_atomic(pafs.LocalFileSystem(), str(out_path),
                         json.dumps(results, indent=1).encode())
    archs = [a for g in groups for a in g]
    lines = ["| NTK test acc (%) | " + " | ".join(TRANSFORMS) + " |",
             "|---|" + "---|" * len(TRANSFORMS)]
    for a in archs:
        cells = [results.get(f"{a}/{t2}") for t2 in TRANSFORMS]
        lines.append(f"| {a} | " + " | ".join("" if c is None else f"{100 * c['test_acc']:.1f}"
                                              for c in cells) + " |")
    print("\n".join(lines))
    print(f"results: {out_path}; load average after: {open('/proc/loadavg').read().strip()}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
