"""The synthetic dataset: a deterministic stream of CIFAR-shaped images whose class is carried
by local, translation-invariant colour-texture motifs (`synthetic_images`). It needs no
download, so tests and the smoke/cpu presets run anywhere; `workers.data.build_dataset` builds
it with ``dataset='synthetic'``.
"""

from __future__ import annotations

import numpy as np

from workers.cifar10 import NUM_CLASSES

SYNTHETIC_VERSION = 1  # bump whenever synthetic_images changes its output
# Synthetic split sizes when cfg leaves them out (a tenth of CIFAR-10's; any size is valid).
SYNTHETIC_DEFAULT_SIZES = {"train": 4500, "val": 500, "test": 1000}

_SYN_BLOCK = 250  # images per random block; a multiple of 10 keeps every block balanced
_SYN_STREAMS = {"train": 0, "val": 1, "test": 2, "stats": 3}


def synthetic_motifs(seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class motifs (10, k, k, 3) of unit norm and class tints (10, 3) of unit norm.

    A motif is a rank-2 colour texture sum_p t_p (x) c_p with zero-mean k x k textures t_p and
    unit RGB colours c_p, so its average colour is zero: the class shows only in local
    colour-texture patterns (plus a weak global tint, the part a dense model can read).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    t = rng.standard_normal((NUM_CLASSES, 2, k, k))
    t -= t.mean(axis=(2, 3), keepdims=True)
    t /= np.sqrt((t**2).sum(axis=(2, 3), keepdims=True))
    col = rng.standard_normal((NUM_CLASSES, 2, 3))
    col /= np.linalg.norm(col, axis=-1, keepdims=True)
    m = np.einsum("cpij,cpk->cijk", t * np.array([1.0, 0.6])[None, :, None, None], col)
    m /= np.sqrt((m**2).sum(axis=(1, 2, 3), keepdims=True))
    tint = rng.standard_normal((NUM_CLASSES, 3))
    tint /= np.linalg.norm(tint, axis=-1, keepdims=True)
    return m, tint


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Spatially correlated Gaussian noise (N, H, W, C) of unit variance: white noise blurred
    twice by a circular 3x3 box (a 5x5 tent), divided by its exact std 19/81."""
    x = rng.standard_normal(shape)
    for _ in range(2):
        x = sum(np.roll(x, (i, j), axis=(1, 2)) for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9.0
    return x * (81.0 / 19.0)


def synthetic_images(
    n: int,
    image_shape: tuple[int, int] = (32, 32),
    *,
    seed: int = 0,
    split: str = "train",
    subset_seed: int = 0,
    amplitude: float = 4.0,
    tint: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images (n, H, W, 3) float32 and labels (n,) int of a synthetic stream.

    Background (class-independent, image-like): a smooth grey luminance field (std 0.8), a
    smooth colour field (std 0.3 per channel) and white noise (std 0.25). On it: `max(2,
    H*W // 64)` copies of the image's class motif (k x k, k = 3 below 16 pixels, else 5) and
    half as many motifs of random classes (distractors), each at a uniform random position
    (wrapping around, like circular padding) with amplitude `amplitude * U(0.5, 1.5)`; plus
    `tint` times the class tint colour at every pixel (a weak global cue a dense model can
    use). The label is mostly carried by local, translation-invariant colour-texture patterns.
    Images come in blocks of 250 drawn from (seed, split, subset_seed, block): the stream is
    deterministic and the first n images do not depend on n. Every run of 10 consecutive
    images holds each class once.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    k = 3 if min(h, w) < 16 else 5
    motifs, tints = synthetic_motifs(seed, k)
    n_true = max(2, h * w // 64)
    n_dis = n_true // 2
    xs, ys = [], []
    for b in range(-(-n // _SYN_BLOCK)):
        rng = np.random.default_rng(
            np.random.SeedSequence([int(seed), _SYN_STREAMS[split], int(subset_seed), b])
        )
        m = _SYN_BLOCK
        labels = np.concatenate([rng.permutation(NUM_CLASSES) for _ in range(m // NUM_CLASSES)])
        x = 0.8 * _smooth_field(rng, (m, h, w, 1)) + 0.3 * _smooth_field(rng, (m, h, w, 3))
        x += 0.25 * rng.standard_normal((m, h, w, 3))
        rows = np.arange(m)
        for j in range(n_true + n_dis):
            cls = labels if j < n_true else rng.integers(0, NUM_CLASSES, m)
            ph, pw = rng.integers(0, h, m), rng.integers(0, w, m)
            a = amplitude * rng.uniform(0.5, 1.5, m)[:, None]
            for di in range(k):
                for dj in range(k):
                    x[rows, (ph + di) % h, (pw + dj) % w, :] += a * motifs[cls, di, dj, :]
        x += tint * tints[labels][:, None, None, :]
        xs.append(x.astype(np.float32))
        ys.append(labels)
    if not xs:
        return np.zeros((0, h, w, 3), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n].astype(np.int64)


# --------------------------------------------------------------------------- building datasets
