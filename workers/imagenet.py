"""ImageNet (ILSVRC-2012) in its folder layout, streamed with grain: the data of Fig. 5, Fig. 4
(right) and Fig. S4 (paper Sec. 6.2, App. B.2/B.3, F.2; docs/protocol.md, "ImageNet").

Layout read (the one `tar xf ILSVRC2012_img_*.tar` plus the usual val sorting script give)::

    <root>/train/<wnid>/*.JPEG      1000 class folders, about 1.28M images
    <root>/val/<wnid>/*.JPEG        the same 1000 folders, 50 images each

``root`` may be a local path or any URL etils.epath understands (``gs://``, ``s3://`` through
fsspec): files are listed once and then read one by one while training, never all at once.
Any ``.jpeg``/``.jpg``/``.png`` file counts; class folders are sorted, so the label of a wnid is
its index in sorted order (the usual ImageNet label order).

Why grain: it is Google's data loader for JAX (the successor of tf.data for the Flax examples),
pure Python + numpy (no TensorFlow), with random access (`grain.MapDataset`): element i of a
shuffled, repeated, augmented, batched dataset is a pure function of (seed, i), so a run
resumed from a checkpoint at step s restarts at batch s exactly, and per-host sharding is a
slice. PyTorch's DataLoader would pull in torch; tf.data would pull in TensorFlow and makes
deterministic resumption harder.

The recipe's augmentation (Flax's examples/imagenet/input_pipeline.py):
- train: a random crop covering 8%..100% of the image area (and at least 10%: the example's
  ``min_object_covered=0.1``) with aspect ratio in [3/4, 4/3], 10 attempts, else the eval
  crop; resized to ``image_size`` (bicubic); left-right flip with probability 1/2.
- eval: a centre crop of side ``image_size / (image_size + 32) * min(h, w)`` (224 / 256 of
  the shorter side; for other sizes the same 0.875 ratio), resized (bicubic).
- both: per-channel standardisation with the ImageNet mean and standard deviation (the
  example's MEAN_RGB / STDDEV_RGB), then the fixed symmetry transform tau (the same tau for
  train and eval: `workers.transforms.make_transform`, drawn from ``transform_seed``).
The crop is sampled like torchvision's RandomResizedCrop (area uniform, aspect ratio
log-uniform), which the example's tf.image.sample_distorted_bounding_box approximates with the
same ranges; the two differ in the sampling density inside those ranges, not in the ranges.

Subsets: `nested_subset` orders the training images so that every prefix is class-balanced
(class counts differ by at most one while classes have images left) and the prefix of size m is
contained in every longer one; m_i = round(2^(-i/2) m_full) (`subset_size`).

Memory at 224x224: tau is one (d, 3, 3) array of Haar matrices (d = 50,176: 1.8 MB in float32)
or one index array of 3d = 150,528 entries, applied image by image inside the pipeline.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.durable import fsync_dir, fsync_file, fsync_tree, replace_durably
from workers.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")
# Flax examples/imagenet/input_pipeline.py: MEAN_RGB, STDDEV_RGB (on 0..255 pixel values)
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
CROP_PADDING = 32  # the example's, at image_size 224: centre crop 224 / (224 + 32) = 0.875
SPLITS: tuple[str, ...] = ("train", "val")

_HINT = ("expected the ILSVRC-2012 folder layout <root>/train/<wnid>/*.JPEG and "
         "<root>/val/<wnid>/*.JPEG; pass --data-dir <root> (config data_dir), or "
         "data_dir=synthetic://4x64x20 for a small generated folder")


@dataclass(frozen=True)
class ImageFolder:
    """One split of an image-folder dataset: file paths (str, local or URL), int labels
    (index of the class folder in sorted order) and the class folder names."""

    root: str
    split: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.paths)


# Object-storage schemes etils.epath reads (through fsspec, or through TensorFlow's gfile where
# TensorFlow is installed), with the package that gives fsspec the protocol. gcsfs and s3fs are
# in both locks (pyproject extra `cloud`); az:// and hf:// work once their package is installed.
REMOTE_SCHEMES: dict[str, str] = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs",
                                  "hf": "huggingface_hub"}
_INSTALL = "pip install --require-hashes -r requirements/gpu.txt (or requirements/dev.txt)"


def remote_scheme(p: str) -> str | None:
    """The object-storage scheme of a path (``"gs"`` for ``gs://bucket/x``), None for a local
    path. Raises `DataError` for any other ``scheme://``: etils.epath would not read it as a
    URL (an unknown scheme is a KeyError inside every trial, not a path)."""
    if "://" not in p:
        return None
    scheme = p.split("://", 1)[0]
    if scheme not in REMOTE_SCHEMES:
        known = ", ".join(f"{k}://" for k in REMOTE_SCHEMES)
        raise DataError(f"data_dir {p!r}: {scheme}:// cannot be read; the image folder may be "
                        f"a local path or on object storage ({known}); copy it to one of them "
                        "(for a local file:// URL give the path itself)")
    return scheme


def _epath(p: str) -> Any:
    from etils import epath  # grain's own path abstraction (local, gs://, s3:// via fsspec)

    remote_scheme(p)  # an unknown scheme is one line, not etils' KeyError
    return epath.Path(p)


def scan_split(root: str, split: str, *, num_classes: int | None = None,
               classes: Sequence[str] | None = None) -> ImageFolder:
    """List ``<root>/<split>/<class>/<image>``.

    ``num_classes``: the number of class folders expected (refuse fewer: a partial copy would
    silently change the task). ``classes``: the training split's classes, which the eval split
    must match. Raises `DataError` (one line, naming the fix) for a missing root or split
    (on object storage also a missing backend or denied access, as `check_data_dir`), a
    split holding images directly (an unsorted val folder), empty class folders, fewer classes
    than expected, or eval classes that differ from the training ones.
    """
    if remote_scheme(root):
        # the same one-line errors in a trial as in the driver's pre-flight: a worker node
        # may lack the backend or the credentials the driver had (not worth a retry)
        _check_remote(root)
    base = _epath(root)
    if not base.is_dir():
        raise DataError(f"ImageNet folder {root!r} does not exist; {_HINT}")
    sp = base / split
    if not sp.is_dir():
        raise DataError(f"ImageNet folder {root!r} has no {split}/ folder; {_HINT}")
    entries = sorted(sp.iterdir(), key=lambda p: p.name)
    loose = [p for p in entries if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(f"{sp} holds images directly ({loose[0].name}, ...), not in class "
                        f"folders; sort them into {split}/<wnid>/ (for val, e.g. with the "
                        "ILSVRC-2012 ground-truth labels and the usual valprep.sh script)")
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        raise DataError(f"{sp} has no class folders; {_HINT}")
    paths: list[str] = []
    labels: list[int] = []
    for i, d in enumerate(dirs):
        files = sorted(f.name for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} has no images (.JPEG/.jpg/.png); remove it or "
                            "copy its images")
        paths.extend(str(d / f) for f in files)
        labels.extend([i] * len(files))
    names = tuple(d.name for d in dirs)
    if num_classes is not None and len(names) < num_classes:
        raise DataError(f"{sp} has {len(names)} class folders, the config expects "
                        f"{num_classes}; copy the missing classes or set num_classes="
                        f"{len(names)}")
    if classes is not None and tuple(classes) != names:
        miss = sorted(set(classes) - set(names)) or sorted(set(names) - set(classes))
        raise DataError(f"{sp} and the training split have different class folders "
                        f"(e.g. {miss[:3]}); both splits need the same <wnid> folders")
    return ImageFolder(root, split, names, tuple(paths), np.asarray(labels, np.int32))


# ----------------------------------------------------------------------------- subsets


def subset_size(m_full: int, i: int) -> int:
    """m_i = round(2^(-i/2) m_full) (i = 0: all images), at least 1 (paper Sec. 6.2)."""
    if i < 0:
        raise DataError(f"subset index must be >= 0 (0: all images), got {i}")
    return max(1, int(round(m_full * 2.0 ** (-i / 2))))


def nested_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of the image indices whose every prefix is class-balanced.

    Within each class the images are in a random order (from ``seed``); the order interleaves
    the classes round by round (rank 0 of every class, in a random class order, then rank 1,
    ...). A prefix of length m therefore holds floor(m / K) or that plus one images of every
    class that still has images, and the prefix of length m is in every longer prefix.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 16]))
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    class_order = rng.permutation(int(labels.max()) + 1 if len(labels) else 0)
    # lexsort: the last key is the primary one
    return np.lexsort((class_order[labels], rank)).astype(np.int64)


def nested_subset(labels: np.ndarray, m: int, seed: int) -> np.ndarray:
    """The indices of a class-balanced subset of size ``m``, nested in ``m`` for one seed
    (sorted, so reading follows the folder order). Raises `DataError` when m exceeds the
    number of images."""
    if m > len(labels):
        raise DataError(f"a subset of {m} images was asked for but the split has "
                        f"{len(labels)}; lower train_size or the subset index")
    return np.sort(nested_order(labels, seed)[:m])


# ----------------------------------------------------------------------------- images


def decode(data: bytes, where: str = "") -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB. Raises `DataError` naming the file when the bytes
    are not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as ex:
        raise DataError(f"image {where or '<bytes>'} cannot be decoded ({ex}); replace or "
                        "delete the file") from ex


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def center_crop_box(h: int, w: int, image_size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the eval crop: a centred square of 224 / (224 + 32) =
    0.875 of the shorter side, the example's ratio at image_size 224 (kept at every
    image_size; the example's formula 224 / (image_size + 32) would crop half of a 32-pixel
    image)."""
    side = int(min(h, w) * 224 / (224 + CROP_PADDING))
    side = max(1, side)
    return (h - side + 1) // 2, (w - side + 1) // 2, side, side


def random_crop_box(h: int, w: int, rng: np.random.Generator, *,
                    area_range: tuple[float, float] = (0.08, 1.0),
                    ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
                    min_covered: float = 0.1, attempts: int = 10
                    ) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of a random crop (the example's distorted bounding box
    ranges) or None when ``attempts`` draws found none (the caller uses the eval crop)."""
    area = h * w
    lo_r, hi_r = math.log(ratio_range[0]), math.log(ratio_range[1])
    for _ in range(attempts):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(lo_r, hi_r))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h and cw * ch >= min_covered * area:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    return None


def standardize(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> float32, minus MEAN_RGB, divided by STDDEV_RGB (per channel)."""
    return (img.astype(np.float32) - MEAN_RGB) / STDDEV_RGB


def train_view(img: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The training augmentation: random crop, bicubic resize to image_size, random flip;
    (H, W, 3) uint8 -> (image_size, image_size, 3) uint8."""
    h, w = img.shape[:2]
    box = random_crop_box(h, w, rng) or center_crop_box(h, w, image_size)
    t, l_, ch, cw = box
    out = _resize(np.ascontiguousarray(img[t:t + ch, l_:l_ + cw]), image_size)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def eval_view(img: np.ndarray, image_size: int) -> np.ndarray:
    """The eval preprocessing: centre crop, bicubic resize; uint8 (image_size, image_size, 3)."""
    t, l_, ch, cw = center_crop_box(img.shape[0], img.shape[1], image_size)
    return _resize(np.ascontiguousarray(img[t:t + ch, l_:l_ + cw]), image_size)


# ----------------------------------------------------------------------------- pipelines


class _Records:
    """Random-access source of (path, label) for grain."""

    def __init__(self, folder: ImageFolder, indices: np.ndarray):
        self.paths = [folder.paths[i] for i in indices]
        self.labels = folder.labels[indices]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.paths[i], int(self.labels[i])


def _read(path: str) -> np.ndarray:
    """One image file's pixels. A file that is missing or unreadable is a `DataError` (not
    worth a retry); on object storage only a missing file or denied access is: a network
    failure that outlasted the client's own retries (aiohttp's are OSErrors too) propagates, so
    the trial is retried from its checkpoint."""
    try:
        data = _epath(path).read_bytes()
    except OSError as ex:
        if remote_scheme(path) and not isinstance(ex, FileNotFoundError | PermissionError):
            raise
        raise DataError(f"image {path} cannot be read ({_one_line(ex)}); check the data "
                        "folder") from ex
    return decode(data, path)


def _finish(tau: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray],
                                                                       np.ndarray]:
    def finish(img: np.ndarray) -> np.ndarray:
        x = standardize(img)
        return tau(x[None])[0].astype(np.float32, copy=False) if tau is not None else x

    return finish


def train_pipeline(folder: ImageFolder, indices: np.ndarray, *, image_size: int,
                   batch_size: int, seed: int, epochs: int,
                   tau: Callable[[np.ndarray], np.ndarray] | None = None,
                   process_index: int = 0, process_count: int = 1,
                   batched: bool = True) -> Any:
    """The training batches of all ``epochs`` as a grain MapDataset of dicts
    ``{"image": (B, S, S, 3) float32, "label": (B,) int32}`` (S = image_size).

    Batch s is a pure function of (seed, s): a new shuffle every epoch (grain reseeds the
    shuffle per epoch), augmentation seeded by the element index. This host reads the images
    ``process_index::process_count`` of every global batch (``batch_size`` is the global
    batch; it must divide by process_count); the last incomplete batch of the run is dropped.
    Start at step s with ``ds[s:]``. ``batched=False``: the augmented images one by one (this
    host's rows, in order), for `stream_batches`, which decodes them on several threads.
    """
    import grain

    if batch_size % process_count:
        raise DataError(f"batch_size {batch_size} does not divide by the {process_count} hosts")
    finish = _finish(tau)

    def augment(rec: tuple[str, int], rng: np.random.Generator) -> dict[str, Any]:
        path, label = rec
        return {"image": finish(train_view(_read(path), image_size, rng)),
                "label": np.int32(label)}

    ds = grain.MapDataset.source(_Records(folder, np.asarray(indices)))
    ds = ds.shuffle(seed=int(seed) % 2**32).repeat(int(epochs))
    if process_count > 1:  # rows b*B + process_index + k*process_count of global batch b
        ds = ds[process_index::process_count]
    ds = ds.random_map(augment, seed=(int(seed) + 1) % 2**32)
    return ds.batch(batch_size // process_count, drop_remainder=True) if batched else ds


def stream_batches(elements: Any, local_batch: int, start_step: int, stop_step: int, *,
                   threads: int, processes: int = 0) -> Any:
    """Iterate batches ``start_step .. stop_step - 1`` of a `train_pipeline(batched=False)`
    dataset, as dicts of numpy arrays with ``local_batch`` rows (the images of batch s are
    elements ``s * local_batch ..`` of ``elements``, whichever path reads them).

    ``processes = 0``: the images are decoded and augmented on ``threads`` threads of this
    process (PIL and numpy release the GIL inside decoding, resizing and array arithmetic;
    the Python around them holds it) with about 2 x threads images read ahead (a few MB at
    224x224, not whole batches), then stacked into batches.

    ``processes > 0``: grain's multiprocessing (``IterDataset.mp_prefetch``). The images are
    grouped into chunks of `chunk_rows` consecutive images (a divisor of ``local_batch``, at
    most 32: 19 MB at 224x224 in float32); grain hands worker w the chunks w, w + processes,
    ... (it slices the MapDataset right before ``to_iter_dataset``) and reads the workers
    round-robin (``InterleaveIterDataset`` with cycle_length = processes), so the chunks come
    back in order and are stacked into the same batches as the thread path: batch s stays a
    pure function of (seed, s), and a start at step k reads the k-th batch. Each worker holds
    the chunk it is building and one finished chunk (``per_worker_buffer_size=1``), passed
    through shared memory (grain copies every array of an element there; Python 3.11's
    resource tracker may warn at exit about segments grain already unlinked). A `DataError`
    in a worker (an unreadable image) reaches the caller as the same one-line `DataError`.
    ``threads`` is ignored on this path (each worker reads its chunks one image after
    another). Close the iterator (``.close()``) to stop the workers; the training loop does.

    Start method: grain starts its workers with ``spawn`` (process_prefetch.py:
    ``mp.get_context("spawn")``: a fresh interpreter that unpickles the dataset), never
    ``fork``, so they do not inherit this process's JAX runtime, device handles or threads.
    grain imports the jax module in them (for its profiler hooks), which creates no backend;
    nothing in the pipeline calls jax, so no worker opens a device. As with every spawned
    process, the main script is imported again in each worker: a script that trains must
    keep its work under ``if __name__ == "__main__":`` (tools/train_one.py and Ray's worker
    entry point do).
    """
    import grain

    sub = elements[start_step * local_batch:stop_step * local_batch]
    if processes <= 0:
        opts = grain.ReadOptions(num_threads=int(threads),
                                 prefetch_buffer_size=2 * int(threads))
        return iter(sub.to_iter_dataset(opts).batch(local_batch, drop_remainder=True))
    rows = chunk_rows(local_batch)
    per_batch = local_batch // rows
    chunks = in_processes(sub.batch(rows, drop_remainder=True), processes)
    # (per_batch, rows, ...) -> (local_batch, ...): a view of the stacked chunks, no copy
    return iter(chunks.batch(per_batch, drop_remainder=True).map(
        lambda b: {k: v.reshape(local_batch, *v.shape[2:]) for k, v in b.items()}))


def in_processes(ds: Any, processes: int) -> Any:
    """A grain MapDataset read in order by ``processes`` grain worker processes
    (``to_iter_dataset().mp_prefetch``; `stream_batches` says how grain slices and orders the
    elements, and why spawned workers are safe beside JAX): an IterDataset yielding
    ``ds[0], ds[1], ...``. Each worker reads its elements one after another and holds at most
    one finished element besides the one it builds."""
    import grain
    from absl import flags

    # grain reads one of its absl flags (worker profiling) when it starts the workers; outside
    # absl.app nothing has parsed the flags, and reading one then raises: take the defaults
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)) \
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=int(processes),
                                                  per_worker_buffer_size=1))


def chunk_rows(local_batch: int, most: int = 32) -> int:
    """The largest divisor of ``local_batch`` that is at most ``most``: the images a loader
    process decodes into one piece of a batch (`stream_batches`)."""
    return max(d for d in range(1, min(local_batch, most) + 1) if local_batch % d == 0)


def eval_pipeline(folder: ImageFolder, indices: np.ndarray | None = None, *, image_size: int,
                  batch_size: int, tau: Callable[[np.ndarray], np.ndarray] | None = None,
                  process_index: int = 0, process_count: int = 1) -> Any:
    """Evaluation batches (in folder order, last batch kept, sharded like `train_pipeline`)
    as a grain MapDataset of ``{"image", "label"}`` dicts."""
    import grain

    finish = _finish(tau)
    idx = np.arange(len(folder)) if indices is None else np.asarray(indices)

    def load(rec: tuple[str, int]) -> dict[str, Any]:
        path, label = rec
        return {"image": finish(eval_view(_read(path), image_size)), "label": np.int32(label)}

    ds = grain.MapDataset.source(_Records(folder, idx))
    if process_count > 1:
        ds = ds[process_index::process_count]
    return ds.map(load).batch(batch_size, drop_remainder=False)


# ----------------------------------------------------------------------------- folders


def write_folder(root: str, images: Sequence[np.ndarray], labels: np.ndarray, split: str,
                 classes: Sequence[str]) -> None:
    """Write uint8 (H, W, 3) ``images`` as ``<root>/<split>/<classes[label]>/<split>_<i>.JPEG``
    (the ImageNet layout; used for the smoke data and the CIFAR-10 stand-in), each atomically
    (`write_folder_one`); files already there are kept, so an interrupted write resumes."""
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        write_folder_one(root, split, classes[int(lab)], f"{split}_{i:08d}.JPEG", img)


def synthetic_images(num_classes: int, per_class: int, size: int, seed: int, *,
                     draw: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Learnable toy images, a list of N (h, w, 3) uint8 arrays and (N,) labels: each class is a
    coloured blob at its own place on a noisy background (so a small net beats chance within
    a few epochs, and crops and flips keep the class recognisable). Sizes vary by up to 25%
    so the pipeline sees non-square, differently sized images like ImageNet's.

    The classes (place, colour) come from ``seed`` alone; ``draw`` selects independent
    images of those classes (0 for train, 1 for val: the same classes, other images)."""
    protos = np.random.default_rng(np.random.SeedSequence([int(seed), 17]))
    centres = protos.uniform(0.3, 0.7, (num_classes, 2))
    colours = protos.uniform(0, 255, (num_classes, 3))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 18, int(draw)]))
    imgs, labs = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            h = int(size * rng.uniform(1.0, 1.25))
            w = int(size * rng.uniform(1.0, 1.25))
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx = centres[c] * (h, w) + rng.normal(0, 0.05, 2) * (h, w)
            blob = np.exp(-(((yy - cy) / (0.2 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2))
            bg = rng.uniform(60, 200, 3)
            img = bg + blob[..., None] * (colours[c] - bg) + rng.normal(0, 20, (h, w, 3))
            imgs.append(np.clip(img, 0, 255).astype(np.uint8))
            labs.append(c)
    return imgs, np.asarray(labs)


def write_synthetic(root: str, *, num_classes: int = 4, train_per_class: int = 64,
                    val_per_class: int = 16, size: int = 24, seed: int = 0) -> str:
    """A tiny ImageNet-layout folder of `synthetic_images` (wnid-like names n0000000c) under
    ``root``; returns root. Idempotent for the same arguments (files present are kept)."""
    classes = [f"n{c:08d}" for c in range(num_classes)]
    for draw, (split, per) in enumerate((("train", train_per_class), ("val", val_per_class))):
        imgs, labs = synthetic_images(num_classes, per, size, seed, draw=draw)
        write_folder(root, imgs, labs, split, classes)
    return root


def write_folder_one(root: str, split: str, cls: str, name: str, img: np.ndarray) -> None:
    """Write one uint8 image as ``<root>/<split>/<cls>/<name>`` (JPEG) through a temporary
    name, so a reader never sees half a file."""
    import os

    from PIL import Image

    d = os.path.join(root, split, cls)
    os.makedirs(d, exist_ok=True)
    final = os.path.join(d, name)
    tmp = f"{final}.{os.getpid()}.part"
    Image.fromarray(np.asarray(img, np.uint8)).save(tmp, format="JPEG", quality=95)
    fsync_file(tmp)  # durable before the rename (workers.durable says why)
    replace_durably(tmp, final)


# ----------------------------------------------------------------------------- sources
SYNTHETIC_PREFIX = "synthetic://"  # synthetic://CxNxS: C classes, N train images a class, side S
CIFAR_PREFIX = "cifar10://"  # cifar10://PATH: CIFAR-10 images as an ImageNet-layout folder


def _build_once(final: str, build: Callable[[str], None]) -> str:
    """Build a folder in a temporary sibling and rename it into place; a concurrent builder
    that lost the race discards its copy (the folders are identical). A folder present is
    complete (nothing else creates it)."""
    import os
    import shutil
    import tempfile

    if os.path.isdir(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(final))
    try:
        build(tmp)
        # every file on disk before the rename: a folder present is taken as complete, so a
        # power loss must never leave it with zero-length images
        fsync_tree(tmp)
        try:
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _parse_synthetic(spec: str) -> tuple[int, int, int, int]:
    body = spec[len(SYNTHETIC_PREFIX):]
    try:
        dims, _, seed = body.partition(":")
        c, n, side = (int(v) for v in dims.lower().split("x"))
        out = (c, n, side, int(seed or 0))
    except ValueError:
        out = (0, 0, 0, 0)
    if min(out[:3]) < 1:
        raise DataError(f"data_dir {spec!r}: expected synthetic://CxNxS[:SEED] (C classes, "
                        "N training images a class, about S pixels a side), e.g. "
                        "synthetic://4x64x24")
    return out


def _copy_cifar_tree(src: str, out: str) -> None:
    """CIFAR-10 JPEGs (the tarball ``cifar10-images.tar.xz`` or its extracted folder, layout
    train|test/<class>/<file>) -> ``out/train/<class>/``, ``out/val/<class>/`` (test -> val)."""
    import os
    import shutil
    import tarfile

    names = {"train": "train", "test": "val"}
    path = src
    if os.path.isdir(src) and not os.path.isdir(os.path.join(src, "train")):
        cand = os.path.join(src, "cifar10-images.tar.xz")
        if os.path.isfile(cand):
            path = cand
    if os.path.isdir(path):
        for split, dst in names.items():
            sdir = os.path.join(path, split)
            if not os.path.isdir(sdir):
                raise DataError(f"{path} has no {split}/ folder; give the CIFAR-10 JPEG folder "
                                "(train|test/<class>/*.jpg) or cifar10-images.tar.xz")
            shutil.copytree(sdir, os.path.join(out, dst))
        return
    if not os.path.isfile(path):
        raise DataError(f"data_dir cifar10://{src}: no such file or folder; give the folder "
                        "holding cifar10-images.tar.xz (e.g. cifar10://../shared/data)")
    with tarfile.open(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            parts = parts[1:] if parts and parts[0] in (".", "") else parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in names or \
                    not parts[2].lower().endswith(IMAGE_SUFFIXES) or \
                    any(p in ("", "..") or p.startswith(".") for p in parts):
                continue  # README and anything unexpected; never a path outside out/
            d = os.path.join(out, names[parts[0]], parts[1])
            os.makedirs(d, exist_ok=True)
            fh = tar.extractfile(member)
            if fh is None:
                continue
            with fh, open(os.path.join(d, parts[2]), "wb") as dst_fh:
                shutil.copyfileobj(fh, dst_fh)


def named_classes(config: dict[str, Any]) -> int | None:
    """The number of classes a config names without reading its folder: ``num_classes``, else
    C of ``synthetic://CxNxS``, else 10 for ``cifar10://``; None when only the folder knows."""
    if config.get("num_classes"):
        return int(config["num_classes"])
    d = str(config.get("data_dir") or "")
    if d.startswith(SYNTHETIC_PREFIX):
        head = d[len(SYNTHETIC_PREFIX):].split("x")[0]
        return int(head) if head.isdigit() else None
    return 10 if d.startswith(CIFAR_PREFIX) else None


def _one_line(ex: BaseException) -> str:
    """An exception as ``Type: text`` on one line (gcsfs puts the server's JSON on the next
    lines of a 403)."""
    text = " ".join(str(ex).split()) or repr(ex)
    return f"{type(ex).__name__}: {text[:300]}"


def _check_remote(url: str) -> None:
    """`check_data_dir` for object storage: the scheme's fsspec backend imports, and
    ``<url>/train`` and ``<url>/val`` are folders (one `stat` each: gcsfs and s3fs ask for the
    object, then list at most one key under the prefix; never a listing of the bucket), read
    through etils.epath exactly as the trials read them. Missing backend, missing split, denied
    access and any other failure of the storage client (no credentials, an unknown bucket) are
    each one `DataError` line naming the URL and the fix."""
    scheme = remote_scheme(url)
    base = url.rstrip("/")
    for split in SPLITS:
        where = f"{base}/{split}"
        try:
            # stat, not is_dir: fsspec's isdir answers False for a denied or unauthenticated
            # request, which would blame the layout for a credentials problem
            is_dir = _epath(where).stat().is_directory
        except ImportError as ex:
            raise DataError(f"data_dir {url}: reading {scheme}:// needs the "
                            f"{REMOTE_SCHEMES[str(scheme)]} package ({_one_line(ex)}); install "
                            f"the locked set: {_INSTALL}, or pip install "
                            f"{REMOTE_SCHEMES[str(scheme)]}") from ex
        except FileNotFoundError as ex:
            raise DataError(f"ImageNet folder {url!r} has no {split}/ folder ({where} not "
                            f"found); {_HINT}") from ex
        except PermissionError as ex:
            raise DataError(f"data_dir {url}: access to {where} denied ({_one_line(ex)}); give "
                            "this machine's credentials read access to the bucket") from ex
        except Exception as ex:  # the storage client's own errors: credentials, network, 403
            raise DataError(f"data_dir {url}: {where} cannot be checked ({_one_line(ex)}); "
                            "check the bucket name and that this machine's credentials can "
                            "read it") from ex
        if not is_dir:
            raise DataError(f"ImageNet folder {url!r}: {where} is a file, not a folder; "
                            f"{_HINT}")


def check_data_dir(data_dir: str) -> None:
    """A cheap check, before any trial runs, that ``data_dir`` can be an image folder: a local
    path must hold ``train/`` and ``val/``, each with at least one class folder; on object
    storage (gs://, s3://, az://, hf://) the backend must import and ``train/`` and ``val/``
    must exist (one `stat` each, no listing of the bucket); a ``cifar10://PATH`` source must
    exist; ``synthetic://`` is parsed; any other ``scheme://`` is refused. The full checks
    (every class folder has images, the splits have the same classes, the expected number of
    classes) stay in `scan_split`. Raises `DataError` (one line, naming the fix)."""
    import os

    if data_dir.startswith(SYNTHETIC_PREFIX):
        _parse_synthetic(data_dir)
        return
    if data_dir.startswith(CIFAR_PREFIX):
        src = os.path.expanduser(data_dir[len(CIFAR_PREFIX):])
        if not os.path.exists(src):
            raise DataError(f"data_dir {data_dir}: no such file or folder; give the folder "
                            "holding cifar10-images.tar.xz (e.g. cifar10://../shared/data)")
        return
    if remote_scheme(data_dir):
        _check_remote(data_dir)
        return
    if not os.path.isdir(data_dir):
        raise DataError(f"ImageNet folder {data_dir!r} does not exist; {_HINT}")
    for split in ("train", "val"):
        sp = os.path.join(data_dir, split)
        if not os.path.isdir(sp):
            raise DataError(f"ImageNet folder {data_dir!r} has no {split}/ folder; {_HINT}")
        with os.scandir(sp) as it:
            if not any(e.is_dir() for e in it):
                raise DataError(f"{sp} has no class folders; {_HINT}")


def resolve_data_dir(data_dir: str, cache_dir: str | None = None) -> str:
    """The image-folder root a config's ``data_dir`` names.

    ``synthetic://CxNxS[:SEED]``: a generated folder (`write_synthetic`: C classes, N training
    and max(N // 4, 1) val images a class, about S pixels a side), built once under the cache
    (``cache_dir``, else $SYMSWEEP_CACHE, else ~/.cache/symsweep). ``cifar10://PATH``: the
    CIFAR-10 JPEG copy (PATH: cifar10-images.tar.xz, the folder holding it, or the folder it
    extracts to), copied once into an ImageNet-layout folder under the cache (test -> val), a
    stand-in for ImageNet at CPU scale. Anything else is returned as it is (a local path or a
    URL). Raises `DataError` for a malformed spec or a missing CIFAR-10 source."""
    import hashlib
    import os

    from workers.cifar10 import default_cache_dir

    base = str(cache_dir) if cache_dir else str(default_cache_dir())
    if data_dir.startswith(SYNTHETIC_PREFIX):
        c, n, side, seed = _parse_synthetic(data_dir)
        final = os.path.join(base, f"imagenet-synthetic-v2-{c}x{n}x{side}-{seed}")
        return _build_once(final, lambda d: write_synthetic(
            d, num_classes=c, train_per_class=n, val_per_class=max(n // 4, 1), size=side,
            seed=seed))
    if data_dir.startswith(CIFAR_PREFIX):
        src = os.path.abspath(os.path.expanduser(data_dir[len(CIFAR_PREFIX):]))
        key = hashlib.sha256(src.encode()).hexdigest()[:10]
        return _build_once(os.path.join(base, f"imagenet-cifar10-{key}"),
                           lambda d: _copy_cifar_tree(src, d))
    return data_dir


__all__ = ["CROP_PADDING", "IMAGE_SUFFIXES", "MEAN_RGB", "STDDEV_RGB", "ImageFolder",
           "center_crop_box", "chunk_rows", "decode", "eval_pipeline", "eval_view",
           "in_processes", "nested_order",
           "nested_subset", "random_crop_box", "scan_split", "standardize", "stream_batches",
           "subset_size",
           "synthetic_images", "train_pipeline", "train_view", "write_folder",
           "write_folder_one", "write_synthetic", "named_classes", "resolve_data_dir",
           "SYNTHETIC_PREFIX", "CIFAR_PREFIX", "REMOTE_SCHEMES", "check_data_dir",
           "remote_scheme"]
