"""CIFAR-10 on disk: find a source, download and verify it, read it safely, cache it.

CIFAR-10 sources (`data_dir`, or the cache directory when `data_dir` is None):
- the official `cifar-10-python.tar.gz` (MD5 c58f30108f718f92721af3b95e74349a, verified);
- its unpacked `cifar-10-batches-py/` folder (the pickles are read with a restricted
  unpickler that admits only dicts, lists, str, bytes, ints and plain numpy arrays);
- an image-folder tree `train/<class>/*.png|jpg`, `test/<class>/...` (class folder names as in
  `CLASSES`), or a `.tar`/`.tar.xz` of such a tree (e.g. the shared `cifar10-images.tar.xz`).
When nothing is found, the official tarball is downloaded from `CIFAR10_URL` (environment
variable `SYMSWEEP_CIFAR10_URL` overrides it, e.g. for a mirror) into the cache directory
(`SYMSWEEP_CACHE`, default `~/.cache/symsweep`). Every source is converted once into one
uint8 `.npz` cache (written to a temporary file, then renamed), which later runs load directly.

Reading: `load_cifar10(data_dir, cache_dir) -> RawCifar` (uint8 images in the official split:
45,000 train, 5,000 val, 10,000 test); `prepare_cifar10` builds the cache ahead of a sweep
(`symsweep data prepare`). The builder users call is `workers.data.build_dataset`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.durable import replace_durably
from workers.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = "cifar-10-batches-py"
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASSES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm")
CACHE_VERSION = 1

# progress(stage, done, total): stage is a short label, total None when unknown.
ProgressFn = Callable[[str, int, "int | None"], None]

_HELP = (
    "pass --data-dir (data_dir) pointing at cifar-10-python.tar.gz, an unpacked "
    "cifar-10-batches-py/ folder, or an image folder with train/<class>/*.png|jpg and "
    "test/<class>/... (or a .tar/.tar.xz of one), or use the synthetic dataset"
)


def _noop(stage: str, done: int, total: int | None) -> None:
    return None


# --------------------------------------------------------------------------- cache & download


def default_cache_dir() -> Path:
    """`$SYMSWEEP_CACHE`, else `~/.cache/symsweep`."""
    env = os.environ.get("SYMSWEEP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "symsweep"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def md5sum(path: str | os.PathLike, progress: ProgressFn | None = None) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    progress = progress or _noop
    h = hashlib.md5()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            done += len(chunk)
            progress("verify md5", done, total)
    return h.hexdigest()


def download_cifar10(
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the official tarball into `cache_dir` and verify its MD5; returns its path.

    The bytes go to a temporary file in `cache_dir` that is renamed only once the checksum
    matches; on a mismatch or any error the temporary file is removed and `DataError` raised.
    `url`/`md5` default to `CIFAR10_URL` (or `$SYMSWEEP_CIFAR10_URL`) and `CIFAR10_MD5`.
    """
    progress = progress or _noop
    url = url or os.environ.get("SYMSWEEP_CIFAR10_URL") or CIFAR10_URL
    md5 = (md5 or CIFAR10_MD5).lower()
    cdir = _cache_dir(cache_dir)
    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create cache directory {cdir} ({err}); pass --cache-dir") from err
    dest = cdir / CIFAR10_TARBALL
    fd, tmp = tempfile.mkstemp(dir=cdir, prefix=f".{CIFAR10_TARBALL}.", suffix=".part")
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        progress("download", done, total)
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", err)
                raise DataError(
                    f"CIFAR-10 is not in the cache {cdir} and downloading {url} failed "
                    f"({reason}); {_HELP}"
                ) from err
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != md5:
            raise DataError(
                f"downloaded {url} has MD5 {got}, expected {md5}: the download is corrupt or "
                f"not the official CIFAR-10 archive and was removed; retry, or {_HELP}"
            )
        replace_durably(tmp, str(dest))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, str(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- safe unpickling


def _numpy_attr(module: str, name: str) -> Any:
    """numpy's pickle helpers live in numpy._core (numpy >= 2) or numpy.core (numpy 1.x)."""
    for mod in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {module}.{name}")


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dt


def _latin1_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return obj.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _safe_dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
for _m in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_m, "_reconstruct")] = lambda: _numpy_attr(
        "numpy.core.multiarray", "_reconstruct"
    )
for _m in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_m, "_frombuffer")] = lambda: _numpy_attr("numpy.core.numeric", "_frombuffer")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals plain numpy arrays need.

    dicts, lists, str, bytes and ints are built by pickle opcodes without any global; the only
    globals admitted are numpy's array reconstructors, `numpy.ndarray`, `numpy.dtype` (object
    dtypes refused) and latin1 `_codecs.encode`. Anything else (e.g. `os.system` from a
    tampered `__reduce__`) raises `pickle.UnpicklingError` before it could be called.
    """

    def find_class(self, module: str, name: str) -> Any:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (a CIFAR-10 batch holds only dicts, "
                "lists, str, bytes, ints and numpy arrays)"
            )
        return getter()


def load_cifar_batch(fileobj: io.BufferedIOBase | Any, name: str) -> dict[str, Any]:
    """Read one CIFAR-10 python batch with `RestrictedUnpickler`; keys decoded to str.

    Raises `DataError` (naming `name`) if the pickle needs anything beyond the allowed types or
    is not a dict.
    """
    try:
        obj = RestrictedUnpickler(fileobj, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{name} is not a valid CIFAR-10 batch and was not loaded: {err}; the file may be "
            f"tampered with; use the official {CIFAR10_TARBALL} (MD5 {CIFAR10_MD5})"
        ) from err
    except Exception as err:  # truncated or garbage file
        raise DataError(
            f"{name} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); "
            f"re-download the official {CIFAR10_TARBALL}"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{name} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_arrays(batch: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{name}: 'data' must be a uint8 array (N, 3072); not a CIFAR-10 batch")
    if data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list | np.ndarray):
        raise DataError(f"{name}: expected 'data' (N, 3072) and a 'labels' list")
    lab = np.asarray(labels)
    if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"{name}: 'labels' must be {data.shape[0]} integers")
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise DataError(f"{name}: labels must lie in 0..9")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), lab.astype(np.uint8)


# --------------------------------------------------------------------------- raw CIFAR-10


@dataclass(frozen=True, eq=False)
class RawCifar:
    """Unstandardised CIFAR-10 splits: uint8 images (N, H, W, 3), uint8 labels (N,)."""

    x_train: np.ndarray
    labels_train: np.ndarray
    x_val: np.ndarray
    labels_val: np.ndarray
    x_test: np.ndarray
    labels_test: np.ndarray
    meta: dict = field(default_factory=dict)

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split (and for `train+val`, the official training set)."""
        out = {
            s: np.bincount(getattr(self, f"labels_{s}"), minlength=NUM_CLASSES).tolist()
            for s in ("train", "val", "test")
        }
        out["train+val"] = [a + b for a, b in zip(out["train"], out["val"], strict=True)]
        return out


def _official_split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """First 90% (45k of 50k) train, last 10% (5k) validation, in the official order."""
    n_val = len(x) // 10
    n_tr = len(x) - n_val
    return x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:]


def _from_official_batches(
    read: Callable[[str], Any], where: str, progress: ProgressFn
) -> tuple[np.ndarray, ...]:
    xs, ys = [], []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, n in enumerate(names):
        fobj = read(n)
        if fobj is None:
            raise DataError(f"{where} has no {n}; it is not a complete {CIFAR10_BATCHES}/ folder")
        with fobj:
            x, y = _batch_arrays(load_cifar_batch(fobj, f"{where}/{n}"), f"{where}/{n}")
        xs.append(x)
        ys.append(y)
        progress("read batches", i + 1, len(names))
    x_all, y_all = np.concatenate(xs[:5]), np.concatenate(ys[:5])
    return (*_official_split(x_all, y_all), xs[5], ys[5])


def _read_tarball(path: Path, progress: ProgressFn) -> tuple[np.ndarray, ...]:
    got = md5sum(path, progress)
    if got != CIFAR10_MD5:
        raise DataError(
            f"{path} has MD5 {got}, not the official {CIFAR10_MD5}: it is incomplete or not "
            f"the official {CIFAR10_TARBALL}; re-download it, or pass an unpacked "
            f"{CIFAR10_BATCHES}/ folder or an image folder as --data-dir"
        )
    try:
        # one sequential pass over the gzip stream (no seeking back), nothing written to disk
        blobs: dict[str, bytes] = {}
        with tarfile.open(path, "r:gz") as tf:
            for member in tf:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 2 and parts[0] == CIFAR10_BATCHES:
                    f = tf.extractfile(member)
                    if f is not None:
                        blobs[parts[1]] = f.read()
                        progress("unpack", len(blobs), None)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read {path} as a gzip tarball ({err}); re-download it") from err
    return _from_official_batches(
        lambda n: io.BytesIO(blobs[n]) if n in blobs else None, str(path), progress
    )


def _read_batches_dir(path: Path, progress: ProgressFn) -> tuple[np.ndarray, ...]:
    def read(n: str) -> Any:
        p = path / n
        return open(p, "rb") if p.is_file() else None  # closed by the caller

    return _from_official_batches(read, str(path), progress)


def _decode_image(data: bytes | Path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(src) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise DataError(f"cannot decode image {name} ({err}); remove or replace it") from err


def _stack_split(
    images: list[np.ndarray], labels: list[int], where: str
) -> tuple[np.ndarray, np.ndarray]:
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(
            f"images under {where} have different sizes {sorted(shapes)[:3]}...; "
            "all images must have the same height and width"
        )
    return np.stack(images), np.asarray(labels, dtype=np.uint8)


def _assemble_folder(
    files: dict[str, dict[str, list[str]]],
    load: Callable[[str], np.ndarray],
    where: str,
    progress: ProgressFn,
) -> tuple[np.ndarray, ...]:
    """files[split][class] = names sorted; returns train/val/test arrays (val = last 10%)."""
    for split in ("train", "test"):
        missing = [c for c in CLASSES if not files.get(split, {}).get(c)]
        if missing:
            raise DataError(
                f"{where}: no images in {split}/{missing[0]}/ (missing: {', '.join(missing)}); "
                f"an image folder needs train/<class>/ and test/<class>/ for the classes "
                f"{' '.join(CLASSES)}"
            )
        extra = sorted(set(files.get(split, {})) - set(CLASSES))
        if extra:
            raise DataError(
                f"{where}: unknown class folder {split}/{extra[0]}/; expected only "
                f"{' '.join(CLASSES)}"
            )
    order: list[tuple[str, int, str]] = []  # (part, label, name)
    for c, cls in enumerate(CLASSES):
        names = files["train"][cls]
        n_val = len(names) // 10
        order += [("train", c, n) for n in names[: len(names) - n_val]]
        order += [("val", c, n) for n in names[len(names) - n_val :]]
        order += [("test", c, n) for n in files["test"][cls]]
    total = len(order)
    images: list[np.ndarray] = [None] * total  # type: ignore[list-item]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for i, im in enumerate(pool.map(load, [n for _, _, n in order], chunksize=256)):
            images[i] = im
            if (i + 1) % 1000 == 0 or i + 1 == total:
                progress("decode images", i + 1, total)
    out: list[np.ndarray] = []
    for part in ("train", "val", "test"):
        idx = [i for i, o in enumerate(order) if o[0] == part]
        if not idx:
            out += [np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.uint8)]
            continue
        out += list(_stack_split([images[i] for i in idx], [order[i][1] for i in idx], where))
    shapes = {a.shape[1:] for a in out[0::2] if len(a)}
    if len(shapes) != 1:
        raise DataError(f"{where}: train and test images have different sizes {sorted(shapes)}")
    return tuple(out)


def _list_image_folder(root: Path) -> dict[str, dict[str, list[str]]]:
    files: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "test"):
        d = root / split
        files[split] = {}
        if not d.is_dir():
            continue
        for cdir in sorted(p for p in d.iterdir() if p.is_dir()):
            names = sorted(str(p) for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files[split][cdir.name] = names
    return files


def _read_image_folder(path: Path, progress: ProgressFn) -> tuple[np.ndarray, ...]:
    files = _list_image_folder(path)
    return _assemble_folder(files, lambda n: _decode_image(Path(n), n), str(path), progress)


def _split_class_name(member: str) -> tuple[str, str] | None:
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2]
    return None


def _read_image_tar(path: Path, progress: ProgressFn) -> tuple[np.ndarray, ...]:
    blobs: dict[str, bytes] = {}
    files: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                sc = _split_class_name(member.name)
                if sc is None or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                f = tf.extractfile(member)
                if f is None:
                    continue
                blobs[member.name] = f.read()
                files[sc[0]].setdefault(sc[1], []).append(member.name)
                if len(blobs) % 1000 == 0:
                    progress("read archive", len(blobs), None)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read image archive {path} ({err})") from err
    for split in files.values():
        for names in split.values():
            names.sort()
    return _assemble_folder(files, lambda n: _decode_image(blobs[n], n), str(path), progress)


def _tar_kind(path: Path) -> str | None:
    """'tarball' (official layout), 'image_tar' (train/<class>/...), or None."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for i, member in enumerate(tf):
                name = member.name
                if CIFAR10_BATCHES in name.split("/"):
                    return "tarball"
                if _split_class_name(name) is not None or name.split("/")[0] in ("train", "test"):
                    return "image_tar"
                if i > 50:
                    break
    except (tarfile.TarError, OSError, EOFError):
        return None
    return None


def locate_source(data_dir: str | os.PathLike) -> tuple[str, Path]:
    """Classify `data_dir`: ('tarball'|'batches'|'image_folder'|'image_tar', path).

    Accepts the file itself or a folder that contains it. Raises `DataError` otherwise.
    """
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise DataError(f"--data-dir {p} does not exist; {_HELP}")
    if p.is_file():
        kind = _tar_kind(p) if tarfile.is_tarfile(p) else None
        if kind is None:
            raise DataError(
                f"{p} is neither the official {CIFAR10_TARBALL} nor a tar of "
                f"an image folder; {_HELP}"
            )
        return kind, p.resolve()
    if (p / "data_batch_1").is_file():
        return "batches", p.resolve()
    if (p / CIFAR10_BATCHES / "data_batch_1").is_file():
        return "batches", (p / CIFAR10_BATCHES).resolve()
    if (p / CIFAR10_TARBALL).is_file():
        return "tarball", (p / CIFAR10_TARBALL).resolve()
    if (p / "train").is_dir() and (p / "test").is_dir():
        return "image_folder", p.resolve()
    for name in ("cifar10-images.tar.xz", "cifar10-images.tar"):
        if (p / name).is_file():
            return "image_tar", (p / name).resolve()
    raise DataError(
        f"--data-dir {p} holds no CIFAR-10 (looked for data_batch_1, {CIFAR10_BATCHES}/, "
        f"{CIFAR10_TARBALL}, train/ + test/ class folders, cifar10-images.tar.xz); {_HELP}"
    )


def _fingerprint(kind: str, path: Path) -> str:
    """Identity of a source for cache reuse: path, and the size and modification time (ns) of
    every file read (each image of an image folder)."""
    if kind in ("tarball", "image_tar"):
        st = path.stat()
        items: Iterable[Any] = [(str(path), st.st_size, st.st_mtime_ns)]
    elif kind == "batches":
        items = [
            (n, (path / n).stat().st_size, (path / n).stat().st_mtime_ns)
            for n in sorted(os.listdir(path))
            if n.startswith(("data_batch", "test_batch"))
        ]
    else:
        # Every image's name, size and mtime_ns: a folder's own mtime changes only when an
        # entry is added, removed or renamed, not when an image is rewritten in place (which
        # kept the old pixels in the cache). scandir's stat is cheap (60k files: well under 1 s).
        items = []
        for split in ("train", "test"):
            for cdir in sorted((path / split).iterdir()):
                if cdir.is_dir():
                    with os.scandir(cdir) as it:
                        files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                       for e in it if e.is_file())
                    items.append((split, cdir.name, files))
    return hashlib.sha256(json.dumps([kind, str(path), list(items)]).encode()).hexdigest()[:16]


_READERS = {
    "tarball": _read_tarball,
    "batches": _read_batches_dir,
    "image_folder": _read_image_folder,
    "image_tar": _read_image_tar,
}
_SPLIT_NOTE = {
    "tarball": "official order: train = first 45000 of the training set, val = last 5000",
    "batches": "official order: train = first 45000 of the training set, val = last 5000",
    "image_folder": "image folder: files sorted by name per class; val = last 10% of each class",
    "image_tar": "image folder: files sorted by name per class; val = last 10% of each class",
}


def cache_path(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file for a source kind: `cifar10-official.npz` or `cifar10-images.npz`."""
    tag = "official" if kind in ("tarball", "batches") else "images"
    return _cache_dir(cache_dir) / f"cifar10-{tag}.npz"


def _read_cache_meta(path: Path) -> dict | None:
    """The cache file's metadata, or None when it must be rebuilt: from an older cache version,
    or unreadable (a truncated or foreign file, said as a warning: it is rebuilt, not used)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta_json"]))
    except Exception as ex:
        warnings.warn(f"dataset cache {path} is unreadable ({type(ex).__name__}: {ex}); it is "
                      "rebuilt from the source", stacklevel=2)
        return None
    return meta if meta.get("cache_version") == CACHE_VERSION else None


def prepare_cifar10(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Make sure a CIFAR-10 `.npz` cache exists; returns its path.

    With `data_dir`: read that source unless a cache built from the same (unchanged) source
    exists. Without: use an existing cache (official first, then image-folder), else the
    tarball in the cache dir, else download it (if `download`), else raise `DataError`.
    """
    progress = progress or _noop
    cdir = _cache_dir(cache_dir)
    if data_dir is None:
        if not force:
            for kind in ("tarball", "image_folder"):
                cp = cache_path(kind, cdir)
                if cp.is_file() and _read_cache_meta(cp) is not None:
                    return cp
        tb = cdir / CIFAR10_TARBALL
        if not tb.is_file():
            if not download:
                raise DataError(f"CIFAR-10 is not in the cache {cdir} (download disabled); {_HELP}")
            with _cache_lock(cdir):
                if not tb.is_file():
                    download_cifar10(cdir, progress=progress)
        kind, src = "tarball", tb
    else:
        kind, src = locate_source(data_dir)
    fp = _fingerprint(kind, src)
    cp = cache_path(kind, cdir)

    def fresh() -> bool:
        meta = _read_cache_meta(cp) if cp.is_file() else None
        return meta is not None and meta.get("fingerprint") == fp

    if not force and fresh():
        return cp
    with _cache_lock(cdir):
        if not force and fresh():  # another process built it while we waited
            return cp
        _build_cache(kind, src, fp, cp, progress)
    return cp


@contextlib.contextmanager
def _cache_lock(cdir: Path) -> Iterator[None]:
    """Exclusive lock on `cdir/cifar10.lock` (POSIX flock), so that concurrent runs build the
    cache (or download) once; the others wait and then find it."""
    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create cache directory {cdir} ({err}); pass --cache-dir") from err
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep the cache consistent
        yield
        return
    with open(cdir / "cifar10.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_cache(kind: str, src: Path, fp: str, cp: Path, progress: ProgressFn) -> None:
    x_tr, y_tr, x_va, y_va, x_te, y_te = _READERS[kind](src, progress)
    digest = hashlib.sha256()
    for a in (x_tr, y_tr, x_va, y_va, x_te, y_te):
        digest.update(np.ascontiguousarray(a).tobytes())
    meta = {
        "cache_version": CACHE_VERSION,
        "content_sha256": digest.hexdigest(),
        "source_kind": kind,
        "source": str(src),
        "fingerprint": fp,
        "split": _SPLIT_NOTE[kind],
        "classes": list(CLASSES),
    }
    progress("write cache", 0, 1)
    _write_npz_atomic(
        cp,
        {
            "x_train": x_tr,
            "labels_train": y_tr,
            "x_val": x_va,
            "labels_val": y_va,
            "x_test": x_te,
            "labels_test": y_te,
            "meta_json": np.array(json.dumps(meta)),
        },
    )
    progress("write cache", 1, 1)


_MEMO: dict[str, tuple[tuple[int, int], RawCifar]] = {}


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: ProgressFn | None = None,
) -> RawCifar:
    """CIFAR-10 as uint8 arrays (see `prepare_cifar10` for where it comes from).

    The last loaded cache is kept in memory (keyed by path, size and mtime).
    """
    cp = prepare_cifar10(data_dir, cache_dir, download=download, progress=progress)
    st = cp.stat()
    key = (st.st_size, st.st_mtime_ns)
    hit = _MEMO.get(str(cp))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        with np.load(cp, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:
        raise DataError(
            f"cache {cp} is unreadable ({err}); delete it and run `symsweep data prepare` again"
        ) from err
    meta = json.loads(str(arrays.pop("meta_json")))
    meta["cache"] = str(cp)
    raw = RawCifar(meta=meta, **arrays)
    _MEMO.clear()
    _MEMO[str(cp)] = (key, raw)
    return raw


# --------------------------------------------------------------------------- synthetic data
