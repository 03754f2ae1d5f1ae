"""`symsweep data ...`: prepare the CIFAR-10 cache and look at the transformed images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from workers.errors import ConfigError, DataError

app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="cifar-10-python.tar.gz, an unpacked cifar-10-batches-py/ folder, an image folder "
        "(train/<class>/*.png|jpg, test/<class>/...) or a .tar/.tar.xz of one, or a folder "
        "holding one of these.",
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache folder (default $SYMSWEEP_CACHE or ~/.cache/symsweep)."
    ),
]


class _Bars:
    """Adapts `workers.cifar10` progress callbacks (stage, done, total) to rich progress bars."""

    def __init__(self, progress: object) -> None:
        self.progress = progress
        self.tasks: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.tasks:  # started at the first bar: an error before it prints alone
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@app.command()
def prepare(
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    download: Annotated[
        bool,
        typer.Option(
            "--download/--no-download",
            help="Without --data-dir and without a cache, download the official tarball.",
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache.")] = False,
) -> None:
    """Build the CIFAR-10 cache and count its images.

    The cache is one .npz file; the count printed is of images per split and per class."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from workers.cifar10 import CLASSES, load_cifar10, prepare_cifar10

    err = Console(stderr=True)
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn())
    progress = Progress(*columns, TimeElapsedColumn(), console=err, transient=False)
    bars = _Bars(progress)
    try:
        path = prepare_cifar10(data_dir, cache_dir, download=download, force=force, progress=bars)
        raw = load_cifar10(data_dir, cache_dir, download=download)
    finally:
        if bars.tasks:  # Progress.stop on a display never started prints an empty line
            progress.stop()
    wall = time.perf_counter() - t0
    counts = raw.counts()
    table = Table(title=f"CIFAR-10 images per class ({raw.meta.get('source_kind')})")
    table.add_column("class")
    for split in ("train", "val", "test", "train+val"):
        table.add_column(split, justify="right")
    for c, name in enumerate(CLASSES):
        table.add_row(name, *(str(counts[s][c]) for s in ("train", "val", "test", "train+val")))
    table.add_row("total", *(str(sum(counts[s])) for s in ("train", "val", "test", "train+val")))
    out = Console(markup=False, highlight=False)  # a path with [brackets] as written
    out.print(table)
    out.print(f"source: {raw.meta.get('source')}")
    out.print(f"split:  {raw.meta.get('split')}")
    out.print(f"cache:  {path} ({path.stat().st_size / 2**20:.0f} MiB), {wall:.1f} s")


def _display(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised (and transformed) images (N, H, W, 3) -> uint8 for display.

    pixel = clip(mean_c + std_c * z, 0, 1) * 255 with the dataset's per-channel statistics
    (CIFAR-10: its own [0, 1] pixel mean/std, so the identity row shows the images as they
    are); the synthetic data has no natural pixel scale and uses mean 0.5, std 0.25 (z in
    [-2, 2] spans the range). Transformed rows use the same map, so their colours show what
    tau did to the standardised values.
    """
    img = mean.reshape(1, 1, 1, 3) + std.reshape(1, 1, 1, 3) * x
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@app.command()
def show(
    out: Annotated[Path, typer.Option("--out", help="Output image (e.g. transforms.png).")],
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use the synthetic dataset instead of CIFAR-10.")
    ] = False,
    n: Annotated[int, typer.Option("--n", help="Images per row (1-20).")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of tau and of the image choice.")] = 0,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Pool CIFAR-10 / generate synthetic at it.")
    ] = None,
) -> None:
    """Draw test images under the five transforms, as in Fig. 1.

    One row per transform, one column per image, written as one image file.

    CIFAR-10 comes from --data-dir or the cache built by `symsweep data prepare` (no download
    here); --synthetic uses the synthetic dataset. Pixels map back to [0, 255] by inverse
    standardisation and clipping.
    """
    if synthetic and data_dir is not None:
        raise ConfigError("--synthetic and --data-dir exclude each other; pass one of them")
    if not 1 <= n <= 20:
        raise ConfigError(f"--n must be between 1 and 20, got {n}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workers.data import build_dataset
    from workers.vocab import TRANSFORMS

    n_test = max(10, n)
    cfg: dict = {
        "dataset": "synthetic" if synthetic else "cifar10",
        "data_dir": str(data_dir) if data_dir is not None else None,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "download": False,
        "train_size": 10,
        "val_size": 0,
        "test_size": n_test,
        "subset_seed": seed,
        "transform_seed": seed,
    }
    if image_size is not None:
        cfg["image_size"] = image_size
    rows = []
    for name in TRANSFORMS:
        try:
            ds = build_dataset(cfg | {"transform": name})
        except DataError as err:
            if synthetic or data_dir is not None:
                raise
            raise DataError(f"{err} (--synthetic shows the synthetic dataset instead)") from err
        rows.append(ds.x_test[:n])
    if synthetic:
        mean, std = np.full(3, 0.5), np.full(3, 0.25)
    else:
        mean, std = np.asarray(ds.meta["mean"]), np.asarray(ds.meta["std"])
    classes = ds.meta["classes"]
    labels = ds.labels_test[:n]

    fig, axes = plt.subplots(
        len(TRANSFORMS), n, figsize=(1.25 * n + 1.6, 1.3 * len(TRANSFORMS) + 0.6), squeeze=False
    )
    for r, (name, x) in enumerate(zip(TRANSFORMS, rows, strict=True)):
        imgs = _display(x, mean, std)
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(classes[int(labels[c])], fontsize=8)
            if c == 0:
                ax.set_ylabel(name.replace("_", "\n"), fontsize=8)
    h, w, _ = ds.meta["image_shape"]
    fig.suptitle(
        f"{ds.meta['dataset']}: {ds.meta.get('source', '')}, {h}x{w}, tau seed {seed}; "
        "display = clip(mean + std * z)",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=150)
    except ValueError as err:
        raise ConfigError(f"cannot write {out} ({err}); use a .png (or .pdf/.svg) name") from err
    finally:
        plt.close(fig)
    typer.echo(f"wrote {out}")
