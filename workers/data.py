"""The dataset builder users call: `build_dataset(cfg) -> Dataset` (docs/protocol.md, "D").

Sources: official CIFAR-10 (workers/cifar10.py: download, MD5, safe unpickling, cache), image
folders, or the deterministic synthetic dataset (workers/synthetic.py). This module takes the
splits, class-balanced nested subsets, flips, per-channel standardisation,
one-hot-minus-0.1 targets and the symmetry transform.

Splits: official format: the first 45,000 images of the training set are the training split,
the last 5,000 the validation split (the last tenth in general), the 10,000 test images the test
split. An image folder has no official order: files are sorted by name within each class and
the last tenth of each class's training files (500 of 5,000) is the validation split.

Subsets: each split is put in a fixed class-balanced order (drawn from `subset_seed`: a random
order within each class, then rounds that take one image of every class, the classes shuffled
in each round); `train_size = m` takes the first m, so every prefix is as class-balanced as
possible (exactly when m is a multiple of 10) and a smaller subset is a prefix of a larger one.

Standardisation: per-channel mean and standard deviation of the whole training split (after
average pooling, before flips), so they do not depend on `train_size` and nested subsets stay
nested after standardisation. The transform tau is applied after standardisation, the same tau
to train, validation and test.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.cifar10 import CLASSES, NUM_CLASSES, RawCifar, load_cifar10
from workers.errors import ConfigError
from workers.synthetic import SYNTHETIC_DEFAULT_SIZES, SYNTHETIC_VERSION, synthetic_images

DATASETS: tuple[str, ...] = ("synthetic", "cifar10")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A ready-to-train dataset.

    x_*: float32 (N, H, W, C), standardised with training statistics, then transformed.
    y_*: float32 (N, 10), one-hot minus 0.1 (0.9 for the class, -0.1 elsewhere).
    labels_*: int64 (N,). meta: provenance (source, sizes, statistics, transform, ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    labels_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_test: np.ndarray
    meta: dict


def one_hot_targets(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(N,) int -> (N, K) float32 one-hot minus 0.1."""
    labels = np.asarray(labels, dtype=np.int64)
    return (np.eye(num_classes, dtype=np.float32)[labels] - np.float32(0.1)).astype(np.float32)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A class-balanced order of indices of `labels` (N,): prefixes are balanced.

    Within each class, a random permutation (from `seed`); then rounds taking the next image of
    every class that still has one, the classes in a random order each round.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 424242]))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    n_rounds = int(rank.max()) + 1 if len(rank) else 0
    class_pos = (
        np.stack([rng.permutation(NUM_CLASSES) for _ in range(n_rounds)])
        if n_rounds
        else np.zeros((0, NUM_CLASSES), np.int64)
    )
    key = rank * NUM_CLASSES + (class_pos[rank, labels] if len(rank) else 0)
    return np.argsort(key, kind="stable")


def _int_option(cfg: dict, key: str, default: int | None, minimum: int) -> int | None:
    v = cfg.get(key, default)
    if v is None:
        return None
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float | np.integer | np.floating)
        or float(v) != int(v)
    ):
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    if int(v) < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {int(v)}")
    return int(v)


def _image_hw(cfg: dict, native: tuple[int, int] | None) -> tuple[int, int]:
    v = cfg.get("image_size")
    if v is None:
        return native or (32, 32)
    hw = (v, v) if not isinstance(v, list | tuple) else tuple(v)
    if len(hw) != 2 or any(
        isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1 for s in hw
    ):
        raise ConfigError(f"image_size must be a positive int or [H, W], got {v!r}")
    hw = (int(hw[0]), int(hw[1]))
    if native is not None and (native[0] % hw[0] or native[1] % hw[1]):
        raise ConfigError(
            f"image_size {v!r} must divide the native size {native[0]}x{native[1]} "
            "(images are average-pooled down to it), e.g. 16 or 8"
        )
    if native is None and min(hw) < 4:
        raise ConfigError(f"synthetic image_size must be at least 4, got {v!r}")
    return hw


def avg_pool(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Average-pool (N, H, W, C) down to (N, h, w, C); h, w must divide H, W."""
    n, h0, w0, c = x.shape
    if (h0, w0) == tuple(hw):
        return x
    fh, fw = h0 // hw[0], w0 // hw[1]
    return x.reshape(n, hw[0], fh, hw[1], fw, c).mean(axis=(2, 4), dtype=np.float32)


def _to_float(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = [
        avg_pool(x[s : s + 5000].astype(np.float32) / np.float32(255.0), hw)
        for s in range(0, len(x), 5000)
    ]
    return np.concatenate(out) if out else np.zeros((0, *hw, x.shape[-1]), np.float32)


def _channel_stats(x: np.ndarray, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) of images (N, H, W, C), in chunks."""
    s = np.zeros(x.shape[-1])
    ss = np.zeros(x.shape[-1])
    cnt = 0
    for i in range(0, len(x), 5000):
        chunk = x[i : i + 5000]
        chunk = _to_float(chunk, hw) if hw is not None else chunk
        c64 = chunk.astype(np.float64).reshape(-1, x.shape[-1])
        s += c64.sum(0)
        ss += (c64**2).sum(0)
        cnt += len(c64)
    mean = s / cnt
    std = np.sqrt(np.maximum(ss / cnt - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _take(labels: np.ndarray, size: int | None, seed: int, split: str, key: str) -> np.ndarray:
    order = balanced_order(labels, seed)
    if size is None:
        return order
    if size > len(labels):
        raise ConfigError(
            f"{key}={size} exceeds the {len(labels)} images of the {split} split; "
            f"choose {key} <= {len(labels)}"
        )
    return order[:size]


def build_dataset(cfg: dict) -> Dataset:
    """Build the dataset a run trains and evaluates on (see the module docstring).

    cfg keys (all optional, unknown keys ignored): dataset ('synthetic' | 'cifar10'),
    data_dir, cache_dir, download (bool, default True), train_size, val_size, test_size,
    image_size (int or [H, W]), flip, transform, transform_seed (default cfg['seed'] or 0),
    path_t (float: use the Appendix-E path tau_t instead of `transform`), subset_seed,
    synthetic_seed. Raises `ConfigError` for bad options and `DataError` for missing data.
    """
    name = cfg.get("dataset", "synthetic") or "synthetic"
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    train_size = _int_option(cfg, "train_size", None, 10)
    val_size = _int_option(cfg, "val_size", None, 0)
    test_size = _int_option(cfg, "test_size", None, 10)
    subset_seed = _int_option(cfg, "subset_seed", 0, 0) or 0
    seed = _int_option(cfg, "seed", None, 0)
    transform_seed = _int_option(cfg, "transform_seed", None, 0)
    if transform_seed is None:
        transform_seed = seed if seed is not None else 0
    transform = cfg.get("transform", "identity") or "identity"
    path_t = cfg.get("path_t")
    if path_t is not None:
        try:
            path_t = float(path_t)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"path_t must be a number in [0, 1], got {path_t!r}") from err
    flip = cfg.get("flip", False)
    if flip is None:
        flip = False
    if not isinstance(flip, bool | int | np.integer) or flip not in (0, 1):
        raise ConfigError(f"flip must be true or false, got {flip!r}")
    flip = bool(flip)

    # Resolve the transform name before touching data, so a typo fails fast.
    from workers.transforms import make_transform, path_transform
    from workers.vocab import TRANSFORMS

    if path_t is None and transform not in TRANSFORMS:
        raise ConfigError(
            f"unknown transform {transform!r}; choose one of: {', '.join(TRANSFORMS)}"
        )

    meta: dict[str, Any] = {"dataset": name, "subset_seed": subset_seed, "flip": flip}
    if name == "cifar10":
        raw = load_cifar10(
            cfg.get("data_dir") or None,
            cfg.get("cache_dir") or None,
            download=bool(cfg.get("download", True)),
        )
        native = (raw.x_train.shape[1], raw.x_train.shape[2])
        hw = _image_hw(cfg, native)
        splits = {}
        for split, size, key in (
            ("train", train_size, "train_size"),
            ("val", val_size, "val_size"),
            ("test", test_size, "test_size"),
        ):
            lab = getattr(raw, f"labels_{split}")
            idx = _take(lab, size, subset_seed, split, key)
            splits[split] = (
                _to_float(getattr(raw, f"x_{split}")[idx], hw),
                lab[idx].astype(np.int64),
            )
        mean, std = _stats_cached(raw, hw)
        meta |= {k: raw.meta.get(k) for k in ("source", "source_kind", "split", "cache")}
        content = f"cifar10:{raw.meta.get('content_sha256')}"
        meta["standardisation"] = "per-channel mean/std of the full training split"
    else:
        hw = _image_hw(cfg, None)
        syn_seed = _int_option(cfg, "synthetic_seed", 0, 0) or 0
        sizes = {"train": train_size, "val": val_size, "test": test_size}
        splits = {}
        for split in ("train", "val", "test"):
            n = sizes[split] if sizes[split] is not None else SYNTHETIC_DEFAULT_SIZES[split]
            splits[split] = synthetic_images(
                n,
                hw,
                seed=syn_seed,
                split=split,
                subset_seed=subset_seed if split == "train" else 0,
            )
        mean, std = _synthetic_stats(syn_seed, hw)
        content = f"synthetic-v{SYNTHETIC_VERSION}:{syn_seed}"
        meta |= {
            "source": f"synthetic(seed={syn_seed})",
            "synthetic_seed": syn_seed,
            "standardisation": "per-channel mean/std of 1000 reference training images",
        }

    image_shape = (hw[0], hw[1], 3)
    if path_t is not None:
        tau = path_transform(float(path_t), transform_seed, image_shape)
        meta["path_t"] = float(path_t)
    else:
        tau = make_transform(transform, transform_seed, image_shape)
    out: dict[str, np.ndarray] = {}
    m32, s32 = mean.astype(np.float32), std.astype(np.float32)
    for split, (x, lab) in splits.items():
        x = (x - m32) / s32
        if split == "train" and flip:
            x = np.concatenate([x, x[:, :, ::-1, :]])
            lab = np.concatenate([lab, lab])
        # (an empty split, e.g. val_size=0, skips tau: reshape(0, -1) is ambiguous)
        x = tau(x) if len(x) else x
        out[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.float32)
        out[f"labels_{split}"] = lab
        out[f"y_{split}"] = one_hot_targets(lab)
    meta |= {
        "image_shape": list(image_shape),
        "transform": tau.name,
        "transform_seed": transform_seed,
        "n_train": len(out["x_train"]),
        "n_val": len(out["x_val"]),
        "n_test": len(out["x_test"]),
        "mean": mean.tolist(),
        "std": std.tolist(),
        # A stable identity of exactly these arrays (for caching kernels and results): the
        # source content plus every option that changes the output.
        "data_id": hashlib.sha256(
            json.dumps(
                [
                    content,
                    len(splits["train"][1]),
                    len(splits["val"][1]),
                    len(splits["test"][1]),
                    subset_seed,
                    list(hw),
                    flip,
                    tau.name,
                    transform_seed,
                    meta.get("path_t"),
                ]
            ).encode()
        ).hexdigest()[:16],
        "classes": list(CLASSES) if name == "cifar10" else [f"class{c}" for c in range(10)],
    }
    return Dataset(meta=meta, **out)


_STATS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


@functools.lru_cache(maxsize=8)
def _synthetic_stats(seed: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std of 1000 reference images of the synthetic stream 'stats'."""
    ref, _ = synthetic_images(1000, hw, seed=seed, split="stats")
    return _channel_stats(ref, None)


def _stats_cached(raw: RawCifar, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    key = (id(raw.x_train), raw.meta.get("fingerprint"), hw)
    if key not in _STATS:
        _STATS.clear()
        _STATS[key] = _channel_stats(raw.x_train, hw)
    return _STATS[key]
