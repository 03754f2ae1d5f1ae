"""workers.cifar10 (CIFAR-10 sources, MD5, safe unpickling, cache), workers.data (splits, subsets,
standardisation, flips, targets, transforms) and workers.synthetic (the synthetic dataset's
structure)."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_image_folder

from workers import cifar10
from workers.cifar10 import RestrictedUnpickler, load_cifar10, locate_source, prepare_cifar10
from workers.data import balanced_order, build_dataset
from workers.errors import ConfigError, DataError
from workers.synthetic import synthetic_images
from workers.transforms import TRANSFORMS, make_transform, path_transform


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _assert_official_split(raw, arrays):
    n = len(arrays["x_train"])
    n_tr = n - n // 10
    np.testing.assert_array_equal(raw.x_train, arrays["x_train"][:n_tr])
    np.testing.assert_array_equal(raw.labels_train, arrays["labels_train"][:n_tr])
    np.testing.assert_array_equal(raw.x_val, arrays["x_train"][n_tr:])
    np.testing.assert_array_equal(raw.labels_val, arrays["labels_train"][n_tr:])
    np.testing.assert_array_equal(raw.x_test, arrays["x_test"])
    np.testing.assert_array_equal(raw.labels_test, arrays["labels_test"])


# ----------------------------------------------------------------------------- official format


def test_official_tarball_is_verified_and_read_exactly(mini_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", _md5(mini_cifar["tarball"]))
    raw = load_cifar10(mini_cifar["tarball"], tmp_path / "cache")
    _assert_official_split(raw, mini_cifar["arrays"])
    assert raw.meta["source_kind"] == "tarball"
    # a folder holding the tarball is accepted too
    raw2 = load_cifar10(mini_cifar["tarball"].parent, tmp_path / "cache2")
    _assert_official_split(raw2, mini_cifar["arrays"])
    # the same content from another layout has the same content hash
    raw3 = load_cifar10(mini_cifar["batches"], tmp_path / "cache3")
    assert raw3.meta["content_sha256"] == raw.meta["content_sha256"]
    assert raw3.meta["source_kind"] == "batches"


def test_tarball_with_wrong_md5_is_refused(mini_cifar, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, not the official") as exc:
        load_cifar10(mini_cifar["tarball"], cache)
    assert "\n" not in str(exc.value)
    assert not (cache / "cifar10-official.npz").exists()
    assert mini_cifar["tarball"].exists()  # never delete a user's own file


def test_download_checks_md5_then_caches(mini_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMSWEEP_CIFAR10_URL", mini_cifar["tarball"].as_uri())
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", _md5(mini_cifar["tarball"]))
    cache = tmp_path / "cache"
    seen = []
    raw = load_cifar10(None, cache, progress=lambda s, d, t: seen.append(s))
    _assert_official_split(raw, mini_cifar["arrays"])
    assert "download" in seen and "verify md5" in seen
    assert sorted(p.name for p in cache.iterdir()) == [
        "cifar-10-python.tar.gz",
        "cifar10-official.npz",
        "cifar10.lock",
    ]
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == mini_cifar["tarball"].read_bytes()
    # later runs use the cache: no tarball, no network needed
    (cache / "cifar-10-python.tar.gz").unlink()
    monkeypatch.setenv("SYMSWEEP_CIFAR10_URL", (tmp_path / "gone.tar.gz").as_uri())
    _assert_official_split(load_cifar10(None, cache), mini_cifar["arrays"])


def test_download_with_wrong_checksum_leaves_nothing(mini_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMSWEEP_CIFAR10_URL", mini_cifar["tarball"].as_uri())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"MD5 .*expected c58f30108f718f92721af3b95e74349a"):
        prepare_cifar10(None, cache)
    assert [p.name for p in cache.iterdir()] == ["cifar10.lock"]  # no tarball, no .part


def test_no_data_and_no_network_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as exc:
        load_cifar10(None, tmp_path / "empty")
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in ("--data-dir", "cifar-10-python.tar.gz", "cifar-10-batches-py", "image folder"):
        assert needle in msg
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["cifar10.lock"]
    with pytest.raises(DataError, match="download disabled"):
        prepare_cifar10(None, tmp_path / "empty", download=False)


def test_batches_folder_and_its_parent(mini_cifar, tmp_path):
    for i, where in enumerate((mini_cifar["batches"], mini_cifar["batches"].parent)):
        raw = load_cifar10(where, tmp_path / f"cache{i}")
        _assert_official_split(raw, mini_cifar["arrays"])
        assert raw.meta["source_kind"] == "batches"


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_pickle_is_rejected_and_never_runs(mini_cifar, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _RunsShell(marker), b"labels": [0]}, protocol=2)
    pickle.loads(payload)  # the payload is live: a plain unpickler runs the command
    assert marker.exists()
    marker.unlink()
    (mini_cifar["batches"] / "data_batch_3").write_bytes(payload)
    with pytest.raises(DataError, match=r"data_batch_3 .*system is not allowed") as exc:
        load_cifar10(mini_cifar["batches"], tmp_path / "cache")
    assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        {b"data": np.array([1, "a"], dtype=object), b"labels": [0]},  # object array
        {b"data": eval, b"labels": [0]},  # a builtin function by reference
    ],
)
def test_restricted_unpickler_admits_only_plain_data(obj):
    import io

    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=2)), encoding="bytes").load()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays(protocol):
    import io

    arr = np.arange(24, dtype=np.uint8).reshape(2, 12)
    obj = {"data": arr, "labels": [1, 2], "name": b"x", "s": "y"}
    got = RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load()
    np.testing.assert_array_equal(got["data"], arr)
    assert got["labels"] == [1, 2] and got["name"] == b"x" and got["s"] == "y"


def test_restricted_unpickler_reads_numpy_1_module_names():
    """The official batches were written by numpy 1.x: numpy.core.multiarray._reconstruct."""
    import io

    arr = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251
    raw = pickle.dumps({b"data": arr, b"labels": [3, 4]}, protocol=2)
    assert b"cnumpy._core.multiarray\n_reconstruct" in raw
    old = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    got = RestrictedUnpickler(io.BytesIO(old), encoding="bytes").load()
    np.testing.assert_array_equal(got[b"data"], arr)


def test_truncated_batch_is_a_data_error(mini_cifar, tmp_path):
    p = mini_cifar["batches"] / "test_batch"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(mini_cifar["batches"], tmp_path / "cache")


# ----------------------------------------------------------------------------- image folders


def _check_image_folder(raw, imgs, n_train):
    n_val = n_train // 10
    for c, cls in enumerate(CLASSES):
        np.testing.assert_array_equal(
            raw.x_train[raw.labels_train == c], imgs["train"][cls][:-n_val]
        )
        np.testing.assert_array_equal(raw.x_val[raw.labels_val == c], imgs["train"][cls][-n_val:])
        np.testing.assert_array_equal(raw.x_test[raw.labels_test == c], imgs["test"][cls])


def test_image_folder_and_its_tar(tmp_path):
    root = tmp_path / "imgs"
    imgs = write_image_folder(root, n_train=10, n_test=3)
    raw = load_cifar10(root, tmp_path / "cache")
    assert raw.counts()["train"] == [9] * 10 and raw.counts()["val"] == [1] * 10
    assert raw.counts()["test"] == [3] * 10
    _check_image_folder(raw, imgs, 10)
    for suffix, mode in ((".tar.xz", "w:xz"), (".tar", "w")):
        tar = tmp_path / f"images{suffix}"
        with tarfile.open(tar, mode) as tf:
            tf.add(root / "train", arcname="cifar10/train")
            tf.add(root / "test", arcname="cifar10/test")
        assert locate_source(tar)[0] == "image_tar"
        _check_image_folder(load_cifar10(tar, tmp_path / f"cache{suffix}"), imgs, 10)


def test_image_folder_errors(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, n_train=2, n_test=1)
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"no images in test/dog/"):
        load_cifar10(root, tmp_path / "c1")
    write_image_folder(tmp_path / "b", n_train=2, n_test=1)
    (tmp_path / "b" / "train" / "zebra").mkdir()
    (tmp_path / "b" / "train" / "zebra" / "0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"unknown class folder train/zebra/"):
        load_cifar10(tmp_path / "b", tmp_path / "c2")
    write_image_folder(tmp_path / "g", n_train=2, n_test=1)
    (tmp_path / "g" / "train" / "cat" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*0000.png"):
        load_cifar10(tmp_path / "g", tmp_path / "c3")


def test_unrecognised_data_dir(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match=r"holds no CIFAR-10 .*--data-dir"):
        locate_source(tmp_path / "junk")
    with pytest.raises(DataError, match="does not exist"):
        locate_source(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(DataError, match="neither the official"):
        locate_source(tmp_path / "file.txt")


def test_cache_reused_rebuilt_on_change_and_written_atomically(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_image_folder(root, n_train=2, n_test=1)
    cache = tmp_path / "cache"
    p1 = prepare_cifar10(root, cache)
    t1 = p1.stat().st_mtime_ns
    assert prepare_cifar10(root, cache).stat().st_mtime_ns == t1  # same source: reused
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "cat" / "9999.png")
    before = load_cifar10(root, cache)  # source changed: rebuilt with the extra image
    assert before.counts()["train+val"][CLASSES.index("cat")] == 3

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare_cifar10(root, cache, force=True)
    # the old cache is kept and no temporary file is left
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10-images.npz", "cifar10.lock"]


def test_concurrent_prepares_build_the_cache_once(tmp_path, monkeypatch):
    import threading

    root = tmp_path / "imgs"
    write_image_folder(root, n_train=2, n_test=1)
    calls = []
    real = cifar10._READERS["image_folder"]

    def slow_reader(path, progress):
        calls.append(path)
        time.sleep(0.3)
        return real(path, progress)

    monkeypatch.setitem(cifar10._READERS, "image_folder", slow_reader)
    out = []
    threads = [
        threading.Thread(target=lambda: out.append(prepare_cifar10(root, tmp_path / "c")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 3 and len(set(out)) == 1


# ----------------------------------------------------------------------------- subsets & build


def test_balanced_order_prefixes_are_balanced_and_nested():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    counts = np.bincount(labels, minlength=10)
    order = balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(500))
    for m in range(1, 500):
        c = np.bincount(labels[order[:m]], minlength=10)
        if m <= 10 * counts.min():
            assert c.max() - c.min() <= 1
            if m % 10 == 0:
                assert (c == m // 10).all()
    np.testing.assert_array_equal(order, balanced_order(labels, seed=3))
    assert not np.array_equal(order, balanced_order(labels, seed=4))


def _reference_standardise(raw_x_train_split, x, pool=1):
    """Independent reference: float64, explicit loops for pooling."""

    def pooled(a):
        a = a.astype(np.float64) / 255.0
        if pool == 1:
            return a
        n, h, w, c = a.shape
        out = np.zeros((n, h // pool, w // pool, c))
        for i in range(h // pool):
            for j in range(w // pool):
                out[:, i, j] = a[:, i * pool : (i + 1) * pool, j * pool : (j + 1) * pool].mean(
                    (1, 2)
                )
        return out

    ref = pooled(raw_x_train_split)
    mean = ref.reshape(-1, 3).mean(0)
    std = ref.reshape(-1, 3).std(0)
    return (pooled(x) - mean) / std


def test_build_dataset_cifar_pipeline(mini_cifar, tmp_path):
    arrays = mini_cifar["arrays"]
    base = {
        "dataset": "cifar10",
        "data_dir": str(mini_cifar["batches"]),
        "cache_dir": str(tmp_path),
    }
    d = build_dataset(base | {"train_size": 40, "test_size": 10})
    raw_tr = arrays["x_train"][:90]
    assert d.x_train.shape == (40, 32, 32, 3) and d.x_train.dtype == np.float32
    assert d.x_val.shape == (10, 32, 32, 3) and d.x_test.shape == (10, 32, 32, 3)
    assert (np.bincount(d.labels_train, minlength=10) == 4).all()
    # each example is its source image in the balanced order, standardised with the whole
    # training split's statistics (not the subset's)
    idx_tr = balanced_order(arrays["labels_train"][:90], 0)[:40]
    ref_tr = _reference_standardise(raw_tr, raw_tr[idx_tr])
    np.testing.assert_allclose(d.x_train, ref_tr, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(d.labels_train, arrays["labels_train"][idx_tr])
    idx_te = balanced_order(arrays["labels_test"], 0)[:10]
    np.testing.assert_allclose(
        d.x_test, _reference_standardise(raw_tr, arrays["x_test"][idx_te]), rtol=0, atol=2e-5
    )
    idx_va = balanced_order(arrays["labels_train"][90:], 0)
    np.testing.assert_allclose(
        d.x_val, _reference_standardise(raw_tr, arrays["x_train"][90:][idx_va]), rtol=0, atol=2e-5
    )
    assert abs(float(build_dataset(base).x_train.mean(dtype=np.float64))) < 1e-6
    # targets: one-hot minus 0.1
    np.testing.assert_array_equal(d.y_train.argmax(1), d.labels_train)
    assert set(np.unique(d.y_train).tolist()) == {np.float32(-0.1), np.float32(0.9)}
    assert d.y_train.dtype == np.float32 and d.y_train.shape == (40, 10)
    # nested subsets: smaller train_size is a prefix, identical after standardisation
    d20 = build_dataset(base | {"train_size": 20, "test_size": 10})
    np.testing.assert_array_equal(d20.x_train, d.x_train[:20])
    np.testing.assert_array_equal(d20.x_test, d.x_test)
    # flips double the training set
    df = build_dataset(base | {"train_size": 20, "flip": True})
    np.testing.assert_array_equal(df.x_train[:20], d20.x_train)
    np.testing.assert_array_equal(df.x_train[20:], d20.x_train[:, :, ::-1, :])
    np.testing.assert_array_equal(df.labels_train, np.tile(d20.labels_train, 2))
    # average pooling to image_size, before standardisation
    d8 = build_dataset(base | {"train_size": 20, "image_size": 8})
    assert d8.x_train.shape == (20, 8, 8, 3)
    np.testing.assert_allclose(
        d8.x_train, _reference_standardise(raw_tr, raw_tr[idx_tr[:20]], pool=4), rtol=0, atol=2e-5
    )
    assert d.meta["n_train"] == 40 and d.meta["image_shape"] == [32, 32, 3]


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_applied_after_standardisation_to_every_split(mini_cifar, tmp_path, name):
    base = {
        "dataset": "cifar10",
        "data_dir": str(mini_cifar["batches"]),
        "cache_dir": str(tmp_path),
        "train_size": 20,
        "flip": True,
        "seed": 5,
        "image_size": 8,  # keeps the (3d x 3d) global rotation small
    }
    d0 = build_dataset(base)
    dt = build_dataset(base | {"transform": name})
    tau = make_transform(name, 5, (8, 8, 3))  # transform_seed defaults to cfg['seed']
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(
            getattr(dt, f"x_{split}"), tau(getattr(d0, f"x_{split}")), rtol=0, atol=1e-5
        )
        np.testing.assert_array_equal(getattr(dt, f"y_{split}"), getattr(d0, f"y_{split}"))
    assert dt.meta["transform"] == name and dt.meta["transform_seed"] == 5


def test_path_transform_option():
    base = {"train_size": 20, "test_size": 10, "val_size": 0, "image_size": 6, "transform_seed": 2}
    d0 = build_dataset(base)
    dp = build_dataset(base | {"path_t": 0.5})
    tau = path_transform(0.5, 2, (6, 6, 3))
    np.testing.assert_allclose(dp.x_test, tau(d0.x_test), atol=1e-5)
    assert dp.x_val.shape == (0, 6, 6, 3)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"dataset": "mnist"}, r"unknown dataset 'mnist'; choose one of: synthetic, cifar10"),
        ({"train_size": 5}, r"train_size must be at least 10"),
        ({"train_size": "ten"}, r"train_size must be an integer"),
        ({"train_size": 12.5}, r"train_size must be an integer"),
        ({"test_size": True}, r"test_size must be an integer"),
        ({"transform": "mirror"}, r"unknown transform 'mirror'; choose one of: identity"),
        ({"image_size": 2}, r"synthetic image_size must be at least 4"),
        ({"image_size": [8, 8, 3]}, r"image_size must be a positive int or \[H, W\]"),
    ],
)
def test_bad_config_is_a_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_dataset({"train_size": 10, "val_size": 0, "test_size": 10} | cfg)


def test_seeds_flip_validation_and_data_id():
    base = {"train_size": 20, "val_size": 10, "test_size": 10, "image_size": 6}
    a = build_dataset(base)
    same = build_dataset(base | {"seed": None, "transform_seed": None, "flip": None})
    np.testing.assert_array_equal(same.x_train, a.x_train)
    assert same.meta["data_id"] == a.meta["data_id"]
    changes = [
        {},
        {"train_size": 30},
        {"flip": True},
        {"transform": "permutation"},
        {"transform": "permutation", "seed": 1},
        {"synthetic_seed": 1},
        {"subset_seed": 1},
        {"image_size": 8},
    ]
    assert len({build_dataset(base | ch).meta["data_id"] for ch in changes}) == len(changes)
    # transform_seed defaults to seed; an explicit transform_seed wins
    b = build_dataset(base | {"transform": "permutation", "seed": 4})
    c = build_dataset(base | {"transform": "permutation", "transform_seed": 4, "seed": 9})
    np.testing.assert_array_equal(b.x_train, c.x_train)
    assert not np.array_equal(b.x_train, build_dataset(base | {"transform": "permutation"}).x_train)
    with pytest.raises(ConfigError, match="flip must be true or false"):
        build_dataset(base | {"flip": "yes"})
    with pytest.raises(ConfigError, match="path_t must be a number"):
        build_dataset(base | {"path_t": "half"})


def test_bad_cifar_sizes(mini_cifar, tmp_path):
    base = {
        "dataset": "cifar10",
        "data_dir": str(mini_cifar["batches"]),
        "cache_dir": str(tmp_path),
    }
    with pytest.raises(ConfigError, match=r"train_size=100 exceeds the 90 images of the train"):
        build_dataset(base | {"train_size": 100})
    with pytest.raises(ConfigError, match=r"test_size=30 exceeds the 20 images"):
        build_dataset(base | {"test_size": 30})
    with pytest.raises(ConfigError, match=r"image_size 7 must divide the native size 32x32"):
        build_dataset(base | {"image_size": 7})


def test_cifar_without_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        build_dataset({"dataset": "cifar10", "cache_dir": str(tmp_path / "none")})


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_nested_and_balanced():
    x, y = synthetic_images(300, (6, 10), seed=1)
    assert x.shape == (300, 6, 10, 3) and x.dtype == np.float32
    x2, y2 = synthetic_images(120, (6, 10), seed=1)
    np.testing.assert_array_equal(x2, x[:120])
    np.testing.assert_array_equal(y2, y[:120])
    for s in range(0, 300, 10):
        assert sorted(y[s : s + 10].tolist()) == list(range(10))
    assert not np.allclose(synthetic_images(10, (6, 10), seed=2)[0], x[:10])
    assert not np.allclose(synthetic_images(10, (6, 10), seed=1, split="test")[0], x[:10])

    cfg = {"train_size": 30, "val_size": 10, "test_size": 20, "image_size": [6, 10]}
    a, b = build_dataset(cfg), build_dataset(cfg)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = build_dataset(cfg | {"train_size": 60, "subset_seed": 1})
    np.testing.assert_array_equal(c.x_test, a.x_test)  # the test set does not move
    assert not np.allclose(c.x_train[:30], a.x_train)  # a different training sample
    d = build_dataset(cfg | {"train_size": 60})
    np.testing.assert_array_equal(d.x_train[:30], a.x_train)  # nested
    assert a.meta["dataset"] == "synthetic"
    m = a.x_train.reshape(-1, 3).mean(0)
    assert np.abs(m).max() < 0.3  # standardised with reference statistics, roughly centred


def _ridge_acc(f_tr, y_tr, f_te, y_te, lam):
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-8
    a, b = (f_tr - mu) / sd, (f_te - mu) / sd
    g = a.T @ a
    w = np.linalg.solve(g + lam * np.trace(g) / len(g) * np.eye(len(g)), a.T @ (np.eye(10)[y_tr]))
    return float(((b @ w).argmax(1) == y_te).mean())


def _pooled_patch_features(x, n_filters=64, seed=1):
    """Random 3x3 conv filters + ReLU, average- and max-pooled over positions: (N, 2F)."""
    n, h, w, c = x.shape
    p = np.stack(
        [np.roll(x, (-i, -j), axis=(1, 2)) for i in range(3) for j in range(3)], -1
    ).reshape(n, h * w, 9 * c)
    r = np.random.default_rng(seed).standard_normal((9 * c, n_filters)) / np.sqrt(9 * c)
    z = np.maximum(p @ r, 0)
    return np.concatenate([z.mean(1), z.max(1)], 1)


def test_synthetic_labels_live_in_local_patterns_that_scrambling_destroys():
    """A local, translation-invariant classifier beats a dense one on identity data; scrambling
    (a random permutation of all coordinates) ruins the local one, not the dense one."""
    cfg = {"train_size": 2000, "val_size": 0, "test_size": 1000, "image_size": 8, "seed": 3}
    res = {}
    for t in ("identity", "permutation"):
        d = build_dataset(cfg | {"transform": t})
        local = _ridge_acc(
            _pooled_patch_features(d.x_train),
            d.labels_train,
            _pooled_patch_features(d.x_test),
            d.labels_test,
            1e-3,
        )
        dense = _ridge_acc(
            d.x_train.reshape(2000, -1),
            d.labels_train,
            d.x_test.reshape(1000, -1),
            d.labels_test,
            1e-1,
        )
        res[t] = (local, dense)
    (loc_id, den_id), (loc_p, den_p) = res["identity"], res["permutation"]
    assert loc_id > 0.7  # chance is 0.1
    assert loc_id > den_id + 0.25  # locality + pooling has a real advantage
    assert loc_p < loc_id - 0.4  # scrambling destroys what the local model uses
    assert abs(den_p - den_id) < 0.02  # a dense linear model cannot tell the difference
    assert den_id > 0.2  # ... and is above chance (the weak global tint)
