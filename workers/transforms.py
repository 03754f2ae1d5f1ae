"""The five symmetry groups of the paper, as fixed random orthogonal maps tau on images.

Each run draws one tau from a group (reproducibly, from its seed) and applies it to every image,
train, validation and test alike, after standardisation (docs/protocol.md, "D").

Conventions: images are float arrays (N, H, W, C), C = 3; a flattened image is the C-order
vector x_flat = x.reshape(N, H*W*C), so pixel alpha = h*W + w holds coordinates
3*alpha ... 3*alpha+2.

| name              | group       | attribute | action                                   |
|-------------------|-------------|-----------|------------------------------------------|
| `identity`        | I_3d        | -         | y = x                                    |
| `shared_rotation` | O(3) (x) I_d| `Q` (3,3) | y[h, w, :] = Q @ x[h, w, :]               |
| `pixel_rotation`  | O(3)^d      | `Qs` (d,3,3) | y[h, w, :] = Qs[h*W + w] @ x[h, w, :] |
| `permutation`     | P(3d)       | `perm` (3d,) | y_flat = x_flat[perm]                 |
| `global_rotation` | O(3d)       | `O` (3d,3d)  | y_flat = O @ x_flat                   |

`path_transform(t, seed)` is the continuous path of Appendix E: tau_t = exp(-t A) with an
independent random 3x3 skew-symmetric A_alpha per pixel, so tau_0 = identity and tau_t lies in
O(3)^d (indeed SO(3)^d) for every t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from workers.errors import ConfigError
from workers.vocab import TRANSFORMS

# Stream ids keep the random draws of different transforms (and the path) independent for the
# same seed, and stable when new transforms are added.
_STREAM = {name: i for i, name in enumerate(TRANSFORMS)} | {"path": 100}

# Rows of a batch multiplied at once by the (3d x 3d) global rotation: bounds the temporary to
# chunk x 3d floats (4096 x 3072 x 4 B = 48 MB) whatever N is.
_CHUNK = 4096


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM[name]]))


def haar_orthogonal(rng: np.random.Generator, n: int, size: Sequence[int] = ()) -> np.ndarray:
    """Haar-distributed orthogonal matrices, shape (*size, n, n), float64.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007);
    without that sign fix the distribution is not Haar.
    """
    g = rng.standard_normal((*size, n, n))
    q, r = np.linalg.qr(g)
    d = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    d = np.where(d == 0, 1.0, d)
    return q * d[..., None, :]


def skew_exp(a: np.ndarray, t: float = 1.0) -> np.ndarray:
    """exp(-t A) for a batch of 3x3 skew-symmetric A, shape (..., 3, 3), by Rodrigues' formula.

    With K = -t A and theta = |axis(K)|: exp(K) = I + sin(theta)/theta K
    + (1 - cos(theta))/theta^2 K^2, exact (and exactly orthogonal up to rounding).
    """
    k = -t * np.asarray(a, dtype=np.float64)
    theta = np.sqrt(k[..., 2, 1] ** 2 + k[..., 0, 2] ** 2 + k[..., 1, 0] ** 2)[..., None, None]
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    c1 = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    c2 = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + c1 * k + c2 * (k @ k)


@dataclass(frozen=True, eq=False)
class Transform:
    """A fixed orthogonal map on images of shape `image_shape`; call it on (N, H, W, C) arrays.

    Exactly one of `Q`, `Qs`, `perm`, `O` is set, by kind (see the module table); identity has
    none. Calling preserves dtype; float32 inputs are multiplied in float32.
    """

    name: str
    seed: int
    image_shape: tuple[int, int, int]
    Q: np.ndarray | None = None
    Qs: np.ndarray | None = None
    perm: np.ndarray | None = None
    O: np.ndarray | None = None  # noqa: E741 (the paper's name)
    t: float | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ConfigError(
                f"transform {self.name!r} was built for images of shape {self.image_shape} "
                f"but got an array of shape {x.shape}; expected (N, *{self.image_shape})"
            )
        dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        x = x.astype(dt, copy=False)
        n, h, w, c = x.shape
        if self.Q is not None:
            return np.einsum("ij,nhwj->nhwi", self.Q.astype(dt), x)
        if self.Qs is not None:
            qs = self.Qs.reshape(h, w, c, c).astype(dt)
            return np.einsum("hwij,nhwj->nhwi", qs, x)
        if self.perm is not None:
            return x.reshape(n, h * w * c)[:, self.perm].reshape(x.shape)
        if self.O is not None:
            flat = x.reshape(n, h * w * c)
            ot = self.O.T.astype(dt)
            out = np.empty_like(flat)
            for s in range(0, n, _CHUNK):
                np.matmul(flat[s : s + _CHUNK], ot, out=out[s : s + _CHUNK])
            return out.reshape(x.shape)
        return x.copy()

    def matrix(self) -> np.ndarray:
        """The dense (3d, 3d) matrix T with y_flat = T @ x_flat (for tests and small images)."""
        h, w, c = self.image_shape
        d = h * w * c
        return self(np.eye(d).reshape(d, h, w, c)).reshape(d, d).T


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[2] != 3:
        raise ConfigError(
            f"image_shape must be (H, W, 3) with positive H, W, got {tuple(image_shape)}; "
            "the rotations act on the 3 colour channels"
        )
    return shape  # type: ignore[return-value]


def make_transform(
    transform: str, seed: int, image_shape: Sequence[int] = (32, 32, 3)
) -> Transform:
    """Draw the fixed tau of group `transform` from `seed` (same seed, same tau).

    Raises `ConfigError` for an unknown name, listing the valid ones. Draws are memoised per
    process: the 3072 x 3072 QR of a CIFAR global rotation costs seconds, and one process
    (a trial, a test session) often needs the same tau for several datasets.
    """
    if transform not in TRANSFORMS:
        raise ConfigError(
            f"unknown transform {transform!r}; choose one of: {', '.join(TRANSFORMS)}"
        )
    return _draw(transform, int(seed), _check_shape(image_shape))


@lru_cache(maxsize=8)
def _draw(transform: str, seed: int, shape: tuple[int, int, int]) -> Transform:
    h, w, c = shape
    rng = _rng(transform, seed)
    kw: dict = {}
    if transform == "shared_rotation":
        kw["Q"] = haar_orthogonal(rng, c)
    elif transform == "pixel_rotation":
        kw["Qs"] = haar_orthogonal(rng, c, size=(h * w,))
    elif transform == "permutation":
        kw["perm"] = rng.permutation(h * w * c)
    elif transform == "global_rotation":
        kw["O"] = haar_orthogonal(rng, h * w * c)
    for arr in kw.values():
        arr.flags.writeable = False  # shared by every caller of the memoised draw
    return Transform(transform, int(seed), shape, **kw)


def path_generator(seed: int, image_shape: Sequence[int] = (32, 32, 3)) -> np.ndarray:
    """The per-pixel skew-symmetric generators A, shape (H*W, 3, 3), entries N(0, 1)."""
    h, w, _ = _check_shape(image_shape)
    b = _rng("path", seed).standard_normal((h * w, 3, 3))
    return (b - np.swapaxes(b, -1, -2)) / np.sqrt(2.0)


def path_transform(t: float, seed: int, image_shape: Sequence[int] = (32, 32, 3)) -> Transform:
    """tau_t = exp(-t A) per pixel (Appendix E); t = 0 is the identity, t = 1 is exp(-A).

    The same seed gives the same A, so the points of one path share it.
    """
    if not np.isfinite(t):
        raise ConfigError(f"path parameter t must be a finite number, got {t!r}")
    shape = _check_shape(image_shape)
    qs = skew_exp(path_generator(seed, shape), float(t))
    return Transform("path", int(seed), shape, Qs=qs, t=float(t))
