"""Benchmark the ImageNet training loader: images/s of the training pipeline at 224x224
(`workers.imagenet.train_pipeline` + `stream_batches`, exactly what `train_imagenet` reads)
from JPEGs of ImageNet-like size, threads against processes, identity and pixel_rotation; where
a pixel_rotation image's time goes; and the CPU cores a node needs per GPU.

    .venv/bin/python benchmarks/imagenet_loader.py                      # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/imagenet_loader.py --workers 8 --per-rep 512 --reps 3
    .venv/bin/python benchmarks/imagenet_loader.py --quick   # seconds: 8 JPEGs, a temp folder

Data: a generated folder (default /tmp/symsweep-imagenet-bench, written once): ``--images``
JPEGs of about 500x375 (ImageNet's typical size; sides drawn from 400..500 x 300..400, either
orientation), smooth random colour fields with texture and noise, quality 90, so each file is
50-150 KB (the size range of ILSVRC-2012's training JPEGs; the script prints the sizes). The
files are in the page cache after the first pass: this measures decoding and augmentation, not
disk or network reads.

Pipeline: ``loader_threads = W`` (W threads in this process) against ``loader_processes = W``
(W grain worker processes), W = ``--workers``; batch ``--batch`` at 224x224; each measurement
reads ``--per-rep`` images from a different starting step (new images every time), and reports
the steady rate (the images after the first few batches over the time after them: `measure`),
the CPU time an image takes there (this process and its loader processes: less sensitive to
other jobs than the wall-clock rate) and the start-up time (to the first batch; for processes
it includes spawning the workers). The four combinations (transform x path) run interleaved,
``--reps`` times, so load from other processes hits all alike; the table reports the best and
the median. ``/proc/loadavg`` is printed before and after.

Stages: one image at a time on one thread: read the file (bytes), decode (PIL, to RGB uint8),
crop + resize (the random crop, bicubic to 224, flip: `train_view`), standardise
(`standardize`), rotation (tau, the per-pixel O(3) matrices: `make_transform("pixel_rotation")`).

Cores per GPU: a GPU training ResNet-101 at ``--gpu-tflops`` (default the planner's ASSUMED
35 TFLOP/s, orchestrator/plan/imagenet.py) takes 35e12 / (training FLOPs per image, from the
planner's `model_flops`) images/s; one core decodes 1 / (sum of the stage times) images/s;
their ratio is the cores a GPU needs. Both numbers are stated; the GPU one is an assumption.

``--quick`` (what ``make test`` runs): the same measurements and tables at tiny sizes (QUICK:
8 JPEGs in a temporary folder, removed afterwards, batch 4, one repetition, 2 stage images,
ResNet-18's FLOP count instead of ResNet-101's, whose lowering takes longer); numbers say
nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

# --quick's settings (argument name: value)
QUICK = {"images": 8, "workers": 2, "batch": 4, "per_rep": 16, "reps": 1, "stage_images": 2,
         "arch": "resnet18"}


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def make_folder(root: str, n: int, seed: int = 0) -> str:
    """``root/train/<class>/*.JPEG`` (8 classes, n images) and ``root/val/<class>/`` (one
    image a class) of ImageNet-like JPEGs, written once (a folder present is reused)."""
    from PIL import Image

    if os.path.isdir(os.path.join(root, "train")) and \
            sum(len(f) for _, _, f in os.walk(os.path.join(root, "train"))) >= n:
        return root
    rng = np.random.default_rng(seed)
    classes = [f"n{c:08d}" for c in range(8)]

    def field(h: int, w: int, cells: int, amp: float) -> np.ndarray:
        low = rng.normal(0, amp, (cells, max(2, cells * w // h), 3))
        chans = [np.asarray(Image.fromarray(low[..., c].astype(np.float32), mode="F").resize(
            (w, h), Image.Resampling.BICUBIC)) for c in range(3)]
        return np.stack(chans, -1)

    for i in range(n + len(classes)):
        h, w = int(rng.integers(300, 401)), int(rng.integers(400, 501))
        if rng.uniform() < 0.3:
            h, w = w, h
        # colour blobs, edges at several scales and sensor-like noise: ~110 KB at 500x375,
        # quality 90 (the mean ILSVRC-2012 training JPEG is about 110 KB)
        img = 128 + field(h, w, 4, 50) + field(h, w, 24, 25) + field(h, w, 96, 25) \
            + field(h, w, 190, 25) + rng.normal(0, 10, (h, w, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        split, cls = ("train", classes[i % 8]) if i < n else ("val", classes[i - n])
        d = os.path.join(root, split, cls)
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img).save(os.path.join(d, f"{split}_{i:06d}.JPEG"), format="JPEG",
                                  quality=90)
    return root


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children so far."""
    tck = os.sysconf("SC_CLK_TCK")
    me, total = str(os.getpid()), time.process_time()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if f[1] == me:  # ppid (fields after the command name: state, ppid, ...)
            total += (int(f[11]) + int(f[12])) / tck
    return total


def measure(ds, batch: int, start: int, steps: int, skip: int, workers: int, processes: bool
            ) -> tuple[float, float, float]:
    """(steady images/s, CPU ms per image in the steady part (this process and its loader
    processes), seconds to the first batch). The steady part is the batches after the first
    ``skip``: while the workers start, the ones already running fill their buffers (a process
    worker holds up to 3 chunks), and those come out faster than they are made. CPU time is
    what the load does not change much (wall time is shared with other jobs)."""
    from workers.imagenet import stream_batches

    t0 = time.perf_counter()
    it = stream_batches(ds, batch, start, start + steps, threads=workers,
                        processes=workers if processes else 0)
    try:
        next(it)
        t1 = time.perf_counter()
        for _ in range(skip - 1):
            next(it)
        t2, c2 = time.perf_counter(), cpu_seconds()
        for _ in range(steps - skip):
            next(it)
        t3, c3 = time.perf_counter(), cpu_seconds()
    finally:
        it.close()
    n = (steps - skip) * batch
    return n / (t3 - t2), 1e3 * (c3 - c2) / n, t1 - t0


def stages(folder, n: int) -> dict[str, float]:
    """Mean seconds per image of each stage of a pixel_rotation training image."""
    from workers.imagenet import decode, standardize, train_view
    from workers.transforms import make_transform

    tau = make_transform("pixel_rotation", 0, (224, 224, 3))
    rng = np.random.default_rng(0)
    t = dict(read=0.0, decode=0.0, crop_resize=0.0, standardise=0.0, rotation=0.0)
    for i in range(n):
        p = folder.paths[i % len(folder)]
        a = time.perf_counter()
        with open(p, "rb") as fh:
            data = fh.read()
        b = time.perf_counter()
        img = decode(data, p)
        c = time.perf_counter()
        v = train_view(img, 224, rng)
        d = time.perf_counter()
        x = standardize(v)
        e = time.perf_counter()
        tau(x[None])
        f = time.perf_counter()
        for k, dt in zip(t, (b - a, c - b, d - c, e - d, f - e), strict=True):
            t[k] += dt / n
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/symsweep-imagenet-bench")
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--per-rep", type=int, default=384, help="images read per measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stage-images", type=int, default=40)
    ap.add_argument("--gpu-tflops", type=float, default=None,
                    help="sustained TFLOP/s per GPU (default: the planner's assumption)")
    ap.add_argument("--arch", default="resnet101")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: QUICK's tiny sizes in a temporary folder (numbers say nothing)")
    args = ap.parse_args()
    if not args.quick:
        return run(args)
    for k, v in QUICK.items():
        setattr(args, k, v)
    with tempfile.TemporaryDirectory(prefix="symsweep-imagenet-quick-") as tmp:
        args.dir = tmp
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The whole benchmark for parsed arguments ``args`` (see the module docstring)."""
    from orchestrator.plan.imagenet import ASSUMED_GPU_TFLOPS, model_flops
    from workers.imagenet import chunk_rows, scan_split, train_pipeline
    from workers.transforms import make_transform

    print(f"load average before: {loadavg()}; {os.cpu_count()} CPU cores")
    root = make_folder(args.dir, args.images)
    folder = scan_split(root, "train")
    sizes = np.array([os.path.getsize(p) for p in folder.paths]) / 1e3
    print(f"{len(folder)} JPEGs in {root}: {sizes.min():.0f}..{sizes.max():.0f} KB, "
          f"median {np.median(sizes):.0f} KB")

    steps = max(2, args.per_rep // args.batch)
    # skip what the workers can hold before the consumer drains them: 3 chunks a worker
    skip = min(steps - 1, 1 + -(-3 * args.workers * chunk_rows(args.batch) // args.batch))
    print(f"batch {args.batch}, {steps * args.batch} images a measurement, the rate over the "
          f"last {(steps - skip) * args.batch} (the first {skip} batches: start-up)")
    epochs = -(-(args.reps * 4 + 1) * steps * args.batch // len(folder)) + 1
    tau = {"identity": None,
           "pixel_rotation": make_transform("pixel_rotation", 0, (224, 224, 3))}
    ds = {k: train_pipeline(folder, np.arange(len(folder)), image_size=224,
                            batch_size=args.batch, seed=0, epochs=epochs, tau=t, batched=False)
          for k, t in tau.items()}
    rates: dict[tuple[str, str], list[float]] = {}
    starts: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    start = 0
    for r in range(args.reps):
        for name in tau:
            for path in ("threads", "processes"):
                rate, cpu, up = measure(ds[name], args.batch, start, steps, skip,
                                        args.workers, path == "processes")
                start += steps
                rates.setdefault((name, path), []).append(rate)
                cpus.setdefault((name, path), []).append(cpu)
                starts.setdefault((name, path), []).append(up)
                print(f"  rep {r} {name:14s} {path:9s} {rate:7.1f} images/s, {cpu:5.2f} CPU "
                      f"ms an image (first batch after {up:.1f} s; load {loadavg()})")

    st = stages(folder, args.stage_images)
    per_img = sum(st.values())
    w = args.workers
    print(f"\n| transform | {w} threads: images/s best (median) | {w} processes: images/s "
          "best (median) | CPU ms an image threads / processes (median) | start-up s "
          "threads / processes (median) |")
    print("|---|---|---|---|---|")
    for name in tau:
        th, pr = rates[(name, "threads")], rates[(name, "processes")]
        med = {k: statistics.median(cpus[(name, k)]) for k in ("threads", "processes")}
        print(f"| {name} | {max(th):.1f} ({statistics.median(th):.1f}) | {max(pr):.1f} "
              f"({statistics.median(pr):.1f}) | {med['threads']:.2f} / "
              f"{med['processes']:.2f} | "
              f"{statistics.median(starts[(name, 'threads')]):.2f} / "
              f"{statistics.median(starts[(name, 'processes')]):.2f} |")

    print("\nOne pixel_rotation training image, one thread (mean of "
          f"{args.stage_images} images):\n")
    print("| stage | ms / image | share |")
    print("|---|---|---|")
    for k, v in st.items():
        print(f"| {k} | {1e3 * v:.2f} | {100 * v / per_img:.0f}% |")
    print(f"| total | {1e3 * per_img:.2f} | 100% |")

    tflops = args.gpu_tflops or ASSUMED_GPU_TFLOPS
    f_train, _ = model_flops(args.arch, 64 if args.arch.startswith("resnet") else 512, None,
                             None, 224, 1000)
    gpu_rate = tflops * 1e12 / f_train
    core_rot = 1.0 / per_img
    core_id = 1.0 / (per_img - st["rotation"])
    print(f"\n{args.arch}: {f_train / 1e9:.1f} GFLOP per training image (planner's count); at "
          f"an ASSUMED {tflops:g} TFLOP/s a GPU trains {gpu_rate:.0f} images/s. One core "
          f"decodes {core_rot:.0f} pixel_rotation images/s ({core_id:.0f} without the rotation)"
          f" here, so a GPU needs {gpu_rate / core_rot:.1f} cores ({gpu_rate / core_id:.1f} "
          f"for identity), {8 * gpu_rate / core_rot:.0f} ({8 * gpu_rate / core_id:.0f}) for "
          "an 8-GPU node, if the loader scales linearly with cores.")
    for name in tau:
        ms = min(statistics.median(cpus[(name, k)]) for k in ("threads", "processes"))
        print(f"From the pipeline's CPU time ({ms:.2f} ms an image, {name}, the cheaper path):"
              f" {gpu_rate * ms / 1e3:.1f} cores a GPU, {8 * gpu_rate * ms / 1e3:.0f} a node.")
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
