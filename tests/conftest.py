"""Shared fixtures: an isolated data cache, tiny CIFAR-10 copies in the official layouts, and
one Ray per test module for drivers to join."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

CLASSES = (
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


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """No test reads the user's cache or reaches the network for CIFAR-10."""
    monkeypatch.setenv("SYMSWEEP_CACHE", str(tmp_path_factory.mktemp("symsweep-cache")))
    missing = tmp_path_factory.mktemp("no-network") / "cifar-10-python.tar.gz"
    monkeypatch.setenv("SYMSWEEP_CIFAR10_URL", missing.as_uri())


def mini_cifar_arrays(n_per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 32x32 uint8 images (HWC) and labels (i % 10) for 5 train batches and a test
    batch: x_train (5 * n_per_batch, 32, 32, 3), labels_train, x_test, labels_test."""
    rng = np.random.default_rng(seed)
    n_tr = 5 * n_per_batch
    return {
        "x_train": rng.integers(0, 256, (n_tr, 32, 32, 3), dtype=np.uint8),
        "labels_train": np.arange(n_tr) % 10,
        "x_test": rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8),
        "labels_test": (np.arange(n_per_batch) * 7) % 10,
    }


def _batch_pickle(x: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    # Exactly the official structure: bytes keys (Python 2 str), rows = R plane, G plane, B
    # plane of 1024 values each (CHW), labels a list of ints, protocol 2.
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": rows,
        b"filenames": [f"img_{name}_{i}.png".encode() for i in range(len(x))],
    }
    return pickle.dumps(batch, protocol=2)


def write_batches(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` as an official `cifar-10-batches-py/` folder under `folder`."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    xs = np.array_split(arrays["x_train"], 5)
    ys = np.array_split(arrays["labels_train"], 5)
    for i in range(5):
        (d / f"data_batch_{i + 1}").write_bytes(_batch_pickle(xs[i], ys[i], f"batch {i + 1}"))
    (d / "test_batch").write_bytes(
        _batch_pickle(arrays["x_test"], arrays["labels_test"], "testing batch")
    )
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": len(xs[0])}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (d / "readme.html").write_text("<html>mini</html>")
    return d


def write_tarball(path: Path, batches_dir: Path) -> Path:
    """Pack a batches folder as `cifar-10-python.tar.gz` (top-level cifar-10-batches-py/)."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(batches_dir, arcname="cifar-10-batches-py")
    return path


@pytest.fixture
def mini_cifar(tmp_path) -> dict:
    """A tiny CIFAR-10 in the official layout: arrays, batches folder and tarball."""
    arrays = mini_cifar_arrays()
    batches = write_batches(tmp_path / "unpacked", arrays)
    (tmp_path / "dl").mkdir()
    tarball = write_tarball(tmp_path / "dl" / "cifar-10-python.tar.gz", batches)
    return {"arrays": arrays, "batches": batches, "tarball": tarball}


def write_image_folder(root: Path, n_train: int = 10, n_test: int = 3, seed: int = 1) -> dict:
    """PNG image folder train/<class>/NNN.png, test/<class>/NNN.png with random pixels.

    Returns {split: {class: [images in file-name order]}} for checking what a loader reads.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict = {"train": {}, "test": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            # written in reverse name order, so a loader must sort to get this order
            for i in reversed(range(n)):
                buf = io.BytesIO()
                Image.fromarray(imgs[i]).save(buf, format="PNG")
                (d / f"{i:04d}.png").write_bytes(buf.getvalue())
            out[split][cls] = imgs
    return out


@pytest.fixture(scope="module")
def ray_env():
    """One Ray session for the module (its GCS address); every driver joins it (as on a
    cluster, and faster than one Ray each), so every trial runs with the same environment
    (single-threaded XLA: bit-identical numbers)."""
    import ray

    from orchestrator.runner import _ray_env
    from orchestrator.spec import Trial

    env = _ray_env([Trial("x", "train", {}, {"cpu": 1.0})])
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", runtime_env={"env_vars": env})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
