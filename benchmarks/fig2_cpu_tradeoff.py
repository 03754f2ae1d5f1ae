"""What a `cpu` Fig. 2 can show on 2 cores: the NTK and NNGP rows on real CIFAR-10 at one image
size and depth, for nested training sets, with each of the paper's orderings tested on the
same test images (issue 27, item 1).

    python benchmarks/fig2_cpu_tradeoff.py --data-dir ../shared/data \\
        --image-size 16 --train-sizes 125,250,500 --test-size 500 --out tradeoff16.json
    python benchmarks/fig2_cpu_tradeoff.py --quick      # seconds: synthetic 8x8, tiny sets

What runs. The cells are those of ``sweeps/fig2.py --preset cpu`` (same transforms, transform
seeds, w_var, b_var, diag_reg), with image size, depth, training and test sizes replaced by the
arguments. For each transform: fcn, vec and lcn are computed separately (cheap, and their
equalities under Theorem 4.1 are then measured, not assumed); gap, lap4 and lap8 come from one
full-covariance propagation, and only for the transforms where Theorem 4.1 makes them differ
(`orchestrator.spec.kernel_equivalence_key`: shared_rotation is identity for every arch, so
gap/lap under it are not recomputed and are reported as identity's). The kernels are computed
once on the largest training set N and the test set T; a training set of m < N is the first m
images of it (`workers.data` puts every split in a class-balanced order, so prefixes are
balanced and nested) and its regression uses the top-left m x m and the first m columns, so
the row for every m costs one kernel computation. Regression: `workers.kernel_trial.kernel_metrics`
at the preset's fixed diag_reg.

Reported, per m: test accuracy (%) of every (arch, transform) cell with its standard error
sqrt(p(1-p)/T); each ordering of the paper as a paired difference on the same T test images
(mean of correct_A - correct_B, standard error std/sqrt(T)), marked "holds" when the difference
is more than two standard errors in the paper's direction, "reversed" when more than two
against it, "unresolved" otherwise; and the cost: wall and process CPU seconds of the kernels
measured at N, scaled to m by the pairs computed (m^2 / 2 + m T train-train and test-train
pairs per full-covariance cell), summed over the cells one Fig. 2 NTK row computes (the
deduplicated cells: what ``symsweep run ... --only inference=ntk`` would run). The load average
is printed before and after.

Orderings (Sec. 5, Fig. 2): on identity gap > vec, lap4 > vec, vec > fcn; fcn equal under every
transform (exact: fcn_inf only sees inner products); vec = lcn, and vec under shared and pixel
rotation equal to identity (Theorem 4.1, exact); gap (and lap4) falling from identity to pixel
rotation, and further to permutation and global rotation.

``--val-size V`` adds the row the preset itself records: m = N, diag_reg chosen on V validation
images of the preset's own split (separate CIFAR-10 training images, never the N training or T
test images; ``workers.data`` draws them beside the same training subset). Only the V x N
validation kernels are computed for it, cached beside the others.

``--quick`` (what ``make test`` runs) is the same code on the deterministic synthetic images at
8x8 with a few images per split; it checks the harness, not the science.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICK = dict(dataset="synthetic", image_size=8, train_sizes=(20, 30, 40), test_size=30,
             depth=2, val_size=20)
GROUPS = (("fcn",), ("vec",), ("lcn",), ("gap", "lap4", "lap8"))
EXACT_TOL = 1e-9  # accuracy fractions: equal means the same test images right


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cells_to_compute(transforms: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(group, transform) pairs computed: every small-covariance cell, and a full-covariance
    group only where Theorem 4.1 makes gap differ from an earlier transform's."""
    from orchestrator.spec import kernel_equivalence_key

    out, seen = [], set()
    for transform in transforms:
        for group in GROUPS:
            if group[0] == "gap":
                key = kernel_equivalence_key("gap", transform)
                if key in seen:
                    continue
                seen.add(key)
            out.append((group, transform))
    return out


def paired(ca: np.ndarray, cb: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of correct_a - correct_b over the same test images."""
    d = ca.astype(float) - cb.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def verdict(diff: float, se: float) -> str:
    if diff > 2 * se:
        return "holds"
    if diff < -2 * se:
        return "reversed"
    return "unresolved"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--train-sizes", default="125,250,500",
                    help="comma-separated nested training set sizes (multiples of 10)")
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--val-size", type=int, default=0,
                    help="also the m = N row with diag_reg chosen on this many images of the "
                         "preset's validation split (the preset's row; 0: not run)")
    ap.add_argument("--transforms", default=None, help="comma-separated (default: all five)")
    ap.add_argument("--out", default=None, help="JSON results (written after every cell)")
    ap.add_argument("--quick", action="store_true", help="seconds: synthetic 8x8, tiny sets")
    args = ap.parse_args()
    from workers.vocab import TRANSFORMS

    transforms = tuple(t.strip() for t in (args.transforms or ",".join(TRANSFORMS)).split(",")
                       if t.strip())
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad or "identity" not in transforms:
        print(f"--transforms: {bad or 'identity is needed'}; choose from "
              f"{','.join(TRANSFORMS)} (identity included)", file=sys.stderr)
        return 2
    if args.val_size < 0 or args.val_size % 10:
        print(f"--val-size {args.val_size}: give a multiple of 10 (classes are balanced), "
              "or 0 for none", file=sys.stderr)
        return 2
    if args.quick:
        sizes, test_size = QUICK["train_sizes"], QUICK["test_size"]
        args.val_size = QUICK["val_size"]  # the quick run covers every row kind
        override = dict(dataset="synthetic", image_size=QUICK["image_size"],
                        depth=QUICK["depth"])
    else:
        try:
            sizes = tuple(sorted(int(s) for s in args.train_sizes.split(",")))
        except ValueError:
            print(f"--train-sizes {args.train_sizes!r}: give integers, e.g. 125,250,500",
                  file=sys.stderr)
            return 2
        test_size = args.test_size
        override = dict(image_size=args.image_size, depth=args.depth, data_dir=args.data_dir)
    if args.out:
        return run(args, Path(args.out), sizes, test_size, override, transforms)
    with tempfile.TemporaryDirectory(prefix="fig2-tradeoff-") as tmp:
        return run(args, Path(tmp) / "tradeoff.json", sizes, test_size, override, transforms)


def run(args: argparse.Namespace, out: Path, sizes: tuple[int, ...], test_size: int,
        override: dict, transforms: tuple[str, ...]) -> int:
    import pyarrow.fs as pafs

    from orchestrator.fsio import write_atomic
    from orchestrator.spec import kernel_equivalence_key, load_sweep
    from sweeps.common import DIAG_REG_GRID
    from workers.data import build_dataset
    from workers.kernel_trial import kernel_metrics

    trials = {(t.config["arch"], t.config["transform"]): t
              for t in load_sweep(ROOT / "sweeps" / "fig2.py").expand("cpu", dedupe=False)
              if t.kind == "kernel" and t.config["inference"] == "ntk"}
    n_max = max(sizes)
    # validation for the chosen regulariser: the last n_val training images (the tail of the
    # class-balanced order), used only with training sets that end before it
    n_val = n_max - max([m for m in sizes if m < n_max], default=0)
    val_sizes = tuple(m for m in sizes if m <= n_max - n_val)
    n_split = int(args.val_size)  # the preset's own validation split (0: none)
    cache = out.with_suffix(".kernels")
    cache.mkdir(parents=True, exist_ok=True)
    load0 = loadavg()
    print(f"load average before: {load0}", file=sys.stderr, flush=True)
    correct: dict[tuple, np.ndarray] = {}
    record: dict = {"args": {"image_size": override["image_size"], "depth": override["depth"],
                             "train_sizes": list(sizes), "test_size": test_size,
                             "val": [n_max - n_val, n_max], "val_train_sizes": list(val_sizes),
                             "split_val_size": n_split,
                             "diag_reg_grid": list(DIAG_REG_GRID),
                             "dataset": override.get("dataset", "cifar10")},
                    "load_before": load0, "cells": {}}

    def put(arch: str, transform: str, m: int, reg: str, res: dict, preds: dict,
            labels: np.ndarray) -> None:
        for kind in ("nngp", "ntk"):
            correct[(arch, transform, m, kind, reg)] = np.argmax(preds[kind], axis=1) == labels
            cell = {"test_acc": res[kind]["test_acc"], "test_mse": res[kind]["test_mse"]}
            if reg != "fixed":
                cell["chosen_diag_reg"] = res[kind]["chosen_diag_reg"]
            record["cells"][f"{kind}/{arch}/{transform}/{m}/{reg}"] = cell

    for group, transform in cells_to_compute(transforms):
        cfg = dict(trials[(group[0], transform)].config, **override, train_size=n_max,
                   test_size=test_size, val_size=0)
        ds = build_dataset(cfg)
        kw = dict(depth=int(cfg["depth"]), w_var=float(cfg["w_var"]), b_var=float(cfg["b_var"]))
        blocks, wall, cpu = cached_kernels(
            cache / f"{'+'.join(group)}_{transform}.npz", group,
            {"tr": (ds.x_train, None), "te": (ds.x_test, ds.x_train)}, kw)
        k_tr, k_te = blocks["tr"], blocks["te"]
        if n_split:
            k_va, ds_v, wall_v, cpu_v = split_val_kernels(
                cache / f"{'+'.join(group)}_{transform}.val{n_split}.npz", group, cfg, ds,
                n_split, kw)
        lo = n_max - n_val
        for arch in group:
            for m in sizes:
                preds: dict[str, np.ndarray] = {}
                res = kernel_metrics(
                    {k: v[:m, :m] for k, v in k_tr[arch].items()},
                    {k: v[:, :m] for k, v in k_te[arch].items()},
                    ds.y_train[:m], ds.y_test, ds.labels_train[:m], ds.labels_test,
                    diag_reg=cfg.get("diag_reg"), test_predictions=preds)
                put(arch, transform, m, "fixed", res, preds, ds.labels_test)
            for m in val_sizes:
                preds = {}
                res = kernel_metrics(
                    {k: v[:m, :m] for k, v in k_tr[arch].items()},
                    {k: v[:, :m] for k, v in k_te[arch].items()},
                    ds.y_train[:m], ds.y_test, ds.labels_train[:m], ds.labels_test,
                    diag_reg=cfg.get("diag_reg"), test_predictions=preds,
                    k_val={k: v[lo:, :m] for k, v in k_tr[arch].items()},
                    y_val=ds.y_train[lo:], labels_val=ds.labels_train[lo:],
                    diag_reg_grid=DIAG_REG_GRID)
                put(arch, transform, m, "val", res, preds, ds.labels_test)
            if n_split:
                preds = {}
                res = kernel_metrics(
                    k_tr[arch], k_te[arch], ds.y_train, ds.y_test, ds.labels_train,
                    ds.labels_test, diag_reg=cfg.get("diag_reg"), test_predictions=preds,
                    k_val=k_va[arch], y_val=ds_v.y_val, labels_val=ds_v.labels_val,
                    diag_reg_grid=DIAG_REG_GRID)
                put(arch, transform, n_max, "split", res, preds, ds.labels_test)
                record["cells"][f"valcost/{arch}/{transform}"] = {
                    "wall_s": wall_v, "cpu_s": cpu_v, "shared_with": list(group)}
            record["cells"][f"cost/{arch}/{transform}"] = {
                "wall_s": wall, "cpu_s": cpu, "n": n_max, "t": test_size,
                "shared_with": list(group)}
        accs = ", ".join(
            f"{a} {100 * record['cells'][f'ntk/{a}/{transform}/{n_max}/fixed']['test_acc']:.1f}%"
            for a in group)
        print(f"{'+'.join(group):14s} {transform:16s} {wall:7.1f} s wall, {cpu:7.1f} s CPU "
              f"(N={n_max}, T={test_size}); NTK acc at m={n_max}: {accs}; load {loadavg()}",
              file=sys.stderr, flush=True)
        write_atomic(pafs.LocalFileSystem(), str(out.resolve()),
                     json.dumps(record, indent=1).encode())
    # gap/lap cells Theorem 4.1 makes equal to an earlier transform's: copied
    for transform in transforms:
        for arch in GROUPS[-1]:
            if (arch, transform, n_max, "ntk", "fixed") in correct:
                continue
            src = kernel_equivalence_key(arch, transform)[1]
            for m, reg in runs_of(sizes, val_sizes, n_split):
                for kind in ("nngp", "ntk"):
                    correct[(arch, transform, m, kind, reg)] = correct[(arch, src, m, kind, reg)]
                    record["cells"][f"{kind}/{arch}/{transform}/{m}/{reg}"] = dict(
                        record["cells"][f"{kind}/{arch}/{src}/{m}/{reg}"], derived_from=src)
    record["load_after"] = loadavg()
    write_atomic(pafs.LocalFileSystem(), str(out.resolve()),
                 json.dumps(record, indent=1).encode())
    print(report(record, correct, sizes, val_sizes, n_split, test_size, transforms))
    print(f"results: {out.resolve()} (kernels: {cache}); load average after: "
          f"{record['load_after']}", file=sys.stderr)
    return 0


def split_val_kernels(f: Path, group: tuple[str, ...], cfg: dict, ds, n_split: int,
                      kw: dict) -> tuple[dict, object, float, float]:
    """The V x N validation kernels of the preset's own split for one group, from ``f`` when
    an earlier run cached them; with the dataset that holds the split and their cost."""
    from workers.data import build_dataset

    ds_v = build_dataset(dict(cfg, val_size=n_split))
    # the split is drawn beside the same training and test subsets: check, do not assume
    if not (np.array_equal(ds_v.x_train, ds.x_train) and np.array_equal(ds_v.x_test, ds.x_test)):
        raise RuntimeError("a validation split changed the training or test images; the "
                           "cached kernels do not apply (workers.data's subset order changed)")
    blocks, wall, cpu = cached_kernels(
        f, group, {"va": (ds_v.x_val, ds.x_train)}, kw)
    return blocks["va"], ds_v, wall, cpu


def cached_kernels(f: Path, group: tuple[str, ...], pairs: dict, kw: dict
                   ) -> tuple[dict, float, float]:
    """Kernel blocks {name: {arch: {"nngp"|"ntk": array}}}, one per ``pairs[name]`` = (x1, x2)
    (`workers.kernels.kernel_matrices` of group's archs; x2 None: x1 x x1), with the wall and
    CPU seconds they took; read from the .npz ``f`` when an earlier run wrote it (a rerun, e.g.
    of the report, reuses its kernels), else computed and written there atomically."""
    import io

    import pyarrow.fs as pafs

    from orchestrator.fsio import write_atomic
    from workers.kernels import kernel_matrices

    kinds = ("nngp", "ntk")
    if f.exists():
        z = np.load(f)
        names = sorted({key.split("_", 1)[0] for key in z.files} - {"wall", "cpu"})
        blocks = {n: {a: {k: z[f"{n}_{a}_{k}"] for k in kinds} for a in group} for n in names}
        return blocks, float(z["wall_s"]), float(z["cpu_s"])
    t0, c0 = time.perf_counter(), cpu_s()
    blocks = {n: kernel_matrices(list(group), x1, x2, **kw) for n, (x1, x2) in pairs.items()}
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    buf = io.BytesIO()
    np.savez(buf, wall_s=wall, cpu_s=cpu, **{f"{n}_{a}_{k}": blocks[n][a][k] for n in blocks
                                             for a in group for k in kinds})
    write_atomic(pafs.LocalFileSystem(), str(f.resolve()), buf.getvalue())
    return blocks, wall, cpu


def runs_of(sizes: tuple[int, ...], val_sizes: tuple[int, ...],
            n_split: int) -> list[tuple[int, str]]:
    """The (m, regulariser) rows: fixed at every m, chosen on the held-out tail where it fits,
    chosen on the preset's split at m = N when asked for."""
    return ([(m, "fixed") for m in sizes] + [(m, "val") for m in val_sizes]
            + ([(max(sizes), "split")] if n_split else []))


def row_cost(record: dict, m: int, test_size: int) -> tuple[float, float]:
    """Wall and CPU seconds of one deduplicated Fig. 2 kernel row at m training images: each
    computed cell's measured cost scaled by its pairs (m^2/2 + m T over N^2/2 + N T); a group
    sharing one propagation counted once; lcn not counted (the sweep computes lcn_inf as
    vec_inf's cell, Theorem 4.1)."""
    wall = cpu = 0.0
    for key, c in record["cells"].items():
        if not key.startswith("cost/"):
            continue
        _, arch, _ = key.split("/")
        if arch != c["shared_with"][0] or arch == "lcn":
            continue
        scale = (m * m / 2 + m * test_size) / (c["n"] ** 2 / 2 + c["n"] * c["t"])
        wall += c["wall_s"] * scale
        cpu += c["cpu_s"] * scale
    return wall, cpu


def report(record: dict, correct: dict, sizes: tuple[int, ...], val_sizes: tuple[int, ...],
           n_split: int, test_size: int, transforms: tuple[str, ...]) -> str:
    a = record["args"]
    archs = ("fcn", "vec", "lcn", "gap", "lap4", "lap8")
    lo, hi = a["val"]
    lines = [f"{a['dataset']} at {a['image_size']}x{a['image_size']}, depth {a['depth']}, "
             f"T = {test_size} test images (standard error of one accuracy <= "
             f"{100 * 0.5 / np.sqrt(test_size):.1f} points); diag_reg fixed at the preset's "
             f"value, or chosen on training images {lo}..{hi - 1} (held out) over "
             f"{a['diag_reg_grid']} x mean diagonal"
             + (f" (or on the preset's {n_split} validation images, at m = {max(sizes)})"
                if n_split else "") + "; load average before "
             f"{record['load_before']}, after {record['load_after']}.", ""]
    runs = runs_of(sizes, val_sizes, n_split)
    hows = {"val": "diag_reg chosen on validation (held-out tail)", "fixed": "diag_reg fixed",
            "split": f"diag_reg chosen on the preset's {n_split} validation images"}
    for kind in ("ntk", "nngp"):
        for m, reg in sorted(runs, key=lambda r: ({"split": 0, "val": 1}.get(r[1], 2), r[0])):
            wall, cpu = row_cost(record, m, test_size)
            if reg == "split":  # plus the V x N validation kernels
                for key, c in record["cells"].items():
                    if key.startswith("valcost/") and key.split("/")[1] == c["shared_with"][0] \
                            and key.split("/")[1] != "lcn":
                        wall, cpu = wall + c["wall_s"], cpu + c["cpu_s"]
            how = hows[reg]
            lines += [f"**{kind.upper()}, m = {m}, {how}** (one deduplicated row's kernels: "
                      f"{wall / 60:.1f} min wall, {cpu / 60:.1f} CPU-min)", "",
                      f"| {kind.upper()} test acc (%) +- s.e. | " + " | ".join(transforms) + " |",
                      "|---|" + "---|" * len(transforms)]
            for arch in archs:
                cells = []
                for t in transforms:
                    c = correct[(arch, t, m, kind, reg)]
                    p = c.mean()
                    cell = f"{100 * p:.1f} +- {100 * np.sqrt(p * (1 - p) / len(c)):.1f}"
                    if reg != "fixed":
                        chosen = record["cells"][f"{kind}/{arch}/{t}/{m}/{reg}"]["chosen_diag_reg"]
                        cell += f" ({chosen:g})"
                    cells.append(cell)
                lines.append(f"| {arch} | " + " | ".join(cells) + " |")
            lines += ["", "| ordering (paper) | difference (points) +- s.e. (paired) "
                      "| verdict |", "|---|---|---|"]
            for name, (x, y) in orderings(transforms):
                d, se = paired(correct[(*x, m, kind, reg)], correct[(*y, m, kind, reg)])
                lines.append(f"| {name} | {100 * d:+.1f} +- {100 * se:.1f} | {verdict(d, se)} |")
            for name, (x, y) in equalities(transforms):
                cx, cy = correct[(*x, m, kind, reg)], correct[(*y, m, kind, reg)]
                same = np.array_equal(cx, cy)
                lines.append(f"| {name} | {100 * (cx.mean() - cy.mean()):+.1f} "
                             f"| {'holds (same test images right)' if same else 'differs'} |")
            lines.append("")
    return "\n".join(lines)


def orderings(transforms: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """The paper's strict orderings as (label, ((arch, transform), (arch, transform))): the
    first should beat the second."""
    out = [("gap > vec on identity", (("gap", "identity"), ("vec", "identity"))),
           ("lap4 > vec on identity", (("lap4", "identity"), ("vec", "identity"))),
           ("vec > fcn on identity", (("vec", "identity"), ("fcn", "identity"))),
           ("gap > fcn on identity", (("gap", "identity"), ("fcn", "identity")))]
    for arch in ("gap", "lap4"):
        # falling under pixel rotation, and further under permutation and global rotation
        base = "identity"
        if "pixel_rotation" in transforms:
            out.append((f"{arch}: identity > pixel_rotation",
                        ((arch, "identity"), (arch, "pixel_rotation"))))
            base = "pixel_rotation"
        for t in ("permutation", "global_rotation"):
            if t in transforms:
                out.append((f"{arch}: {base} > {t}", ((arch, base), (arch, t))))
    return out


def equalities(transforms: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """Theorem 4.1's exact equalities that the computation does not assume."""
    out = [(f"fcn: {t} = identity", (("fcn", t), ("fcn", "identity")))
           for t in transforms if t != "identity"]
    out += [(f"lcn = vec on {t}", (("lcn", t), ("vec", t))) for t in transforms]
    out += [(f"vec: {t} = identity", (("vec", t), ("vec", "identity")))
            for t in ("shared_rotation", "pixel_rotation") if t in transforms]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
