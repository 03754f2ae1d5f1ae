"""The ImageNet loader (workers/imagenet.py) on generated folders, and the ImageNet models
(workers/imagenet_models.py): parameter counts against the published ones, shapes."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from workers import imagenet as I
from workers.errors import DataError
from workers.imagenet_models import init_variables, make_imagenet_model, param_count
from workers.transforms import make_transform


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("imagenet"))
    return I.write_synthetic(root, num_classes=3, train_per_class=10, val_per_class=4, size=20)


# ----------------------------------------------------------------------------- layout


def test_scan_reads_layout(folder: str) -> None:
    tr = I.scan_split(folder, "train", num_classes=3)
    va = I.scan_split(folder, "val", classes=tr.classes)
    assert tr.classes == ("n00000000", "n00000001", "n00000002")
    assert len(tr) == 30 and len(va) == 12
    assert np.bincount(tr.labels).tolist() == [10, 10, 10]
    assert all(p.endswith(".JPEG") for p in tr.paths)


def _msg(ex: pytest.ExceptionInfo) -> str:
    text = str(ex.value)
    assert "\n" not in text  # one line for the CLI
    return text


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(DataError) as ex:
        I.scan_split(str(tmp_path / "nope"), "train")
    assert "does not exist" in _msg(ex) and "data_dir" in _msg(ex)


def test_missing_split(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError) as ex:
        I.scan_split(str(tmp_path), "val")
    assert "no val/ folder" in _msg(ex)


def test_flat_val_folder_is_refused(tmp_path) -> None:
    I.write_folder_one(str(tmp_path), "x", "c", "a.JPEG", np.zeros((4, 4, 3), np.uint8))
    os.replace(tmp_path / "x" / "c" / "a.JPEG", tmp_path / "x" / "a.JPEG")
    with pytest.raises(DataError) as ex:
        I.scan_split(str(tmp_path), "x")
    assert "holds images directly" in _msg(ex) and "x/<wnid>/" in _msg(ex)


def test_empty_class_folder(tmp_path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataError) as ex:
        I.scan_split(str(tmp_path), "train")
    assert "has no images" in _msg(ex)


def test_fewer_classes_than_expected(folder: str) -> None:
    with pytest.raises(DataError) as ex:
        I.scan_split(folder, "train", num_classes=1000)
    assert "3 class folders" in _msg(ex) and "num_classes=3" in _msg(ex)


def test_val_classes_must_match(folder: str) -> None:
    with pytest.raises(DataError) as ex:
        I.scan_split(folder, "val", classes=("n00000000", "n00000001", "n99"))
    assert "different class folders" in _msg(ex)


def test_unreadable_image(tmp_path) -> None:
    d = tmp_path / "train" / "n0"
    d.mkdir(parents=True)
    (d / "bad.JPEG").write_bytes(b"not a jpeg")
    tr = I.scan_split(str(tmp_path), "train")
    ds = I.eval_pipeline(tr, image_size=8, batch_size=1)
    with pytest.raises(DataError) as ex:
        ds[0]
    assert "bad.JPEG cannot be decoded" in _msg(ex) and "replace or delete" in _msg(ex)


# ----------------------------------------------------------------------------- subsets


def test_subset_sizes() -> None:
    m = 1_281_167
    sizes = [I.subset_size(m, i) for i in range(1, 13)]
    assert sizes[0] == round(m / np.sqrt(2)) and sizes[1] == round(m / 2)
    assert sizes[-1] == round(m / 64)
    assert all(a > b for a, b in zip(sizes, sizes[1:], strict=False))


def test_subsets_nested_and_balanced() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), rng.integers(20, 40, 7))  # unequal classes, as ImageNet
    order = I.nested_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    prev: set[int] = set()
    for m in (5, 7, 13, 50, 140, len(labels)):
        sub = I.nested_subset(labels, m, seed=3)
        assert len(sub) == m and len(set(sub.tolist())) == m
        assert prev <= set(sub.tolist())  # nested
        prev = set(sub.tolist())
        counts = np.bincount(labels[sub], minlength=7)
        full = np.bincount(labels, minlength=7)
        live = counts < full  # classes that still have images left
        if live.any():
            assert counts[live].max() - counts[live].min() <= 1
            assert (counts[~live] == full[~live]).all()
    assert not np.array_equal(I.nested_subset(labels, 50, 3), I.nested_subset(labels, 50, 4))
    with pytest.raises(DataError):
        I.nested_subset(labels, len(labels) + 1, 0)


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_shapes_and_determinism(folder: str) -> None:
    tr = I.scan_split(folder, "train")
    ds = I.train_pipeline(tr, np.arange(len(tr)), image_size=16, batch_size=4, seed=0,
                          epochs=2)
    assert len(ds) == (2 * 30) // 4
    b = ds[3]
    assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4,)
    np.testing.assert_array_equal(ds[3]["image"], b["image"])  # a pure function of the index
    # each epoch is a permutation of the training set, reshuffled between epochs
    ep = [np.concatenate([ds[s]["label"] for s in range(e * 7, e * 7 + 7)]) for e in (0, 1)]
    assert np.bincount(ep[0]).max() <= 10
    va = I.scan_split(folder, "val")
    ev = I.eval_pipeline(va, image_size=16, batch_size=5)
    assert [ev[i]["image"].shape[0] for i in range(len(ev))] == [5, 5, 2]  # nothing dropped
    np.testing.assert_array_equal(np.concatenate([ev[i]["label"] for i in range(3)]),
                                  va.labels)


def test_crops() -> None:
    assert I.center_crop_box(256, 320, 224) == (16, 48, 224, 224)
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = I.random_crop_box(100, 60, rng)
        if box is None:
            continue
        t, l_, h, w = box
        assert 0 <= t and t + h <= 100 and 0 <= l_ and l_ + w <= 60
        assert h * w >= 0.1 * 6000 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    img = np.zeros((30, 41, 3), np.uint8)
    assert I.train_view(img, 12, rng).shape == (12, 12, 3)
    assert I.eval_view(img, 12).shape == (12, 12, 3)


def test_standardize_uses_the_example_constants() -> None:
    img = np.broadcast_to(np.array([0.485, 0.456, 0.406]) * 255, (2, 2, 3)).astype(np.uint8)
    assert np.abs(I.standardize(img)).max() < 0.02


# ----------------------------------------------------------------------------- transforms


def test_pixel_rotation_orthogonal_and_shared(folder: str) -> None:
    tau = make_transform("pixel_rotation", 5, (16, 16, 3))
    q = tau.Qs.reshape(-1, 3, 3)
    np.testing.assert_allclose(q @ np.swapaxes(q, 1, 2), np.broadcast_to(np.eye(3), q.shape),
                               atol=1e-12)
    assert np.std(q[:, 0, 0]) > 0.3  # not one shared matrix
    tr, va = I.scan_split(folder, "train"), I.scan_split(folder, "val")
    # the same tau for train and eval: the pipelines give tau(x) of the untransformed images
    plain = I.eval_pipeline(va, image_size=16, batch_size=4)[0]["image"]
    rot = I.eval_pipeline(va, image_size=16, batch_size=4, tau=tau)[0]["image"]
    np.testing.assert_allclose(rot, tau(plain), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rot.reshape(4, -1, 3), axis=-1),
                               np.linalg.norm(plain.reshape(4, -1, 3), axis=-1), rtol=1e-5)
    t_plain = I.train_pipeline(tr, np.arange(8), image_size=16, batch_size=4, seed=1,
                               epochs=1)[1]["image"]
    t_rot = I.train_pipeline(tr, np.arange(8), image_size=16, batch_size=4, seed=1, epochs=1,
                             tau=tau)[1]["image"]
    np.testing.assert_allclose(t_rot, tau(t_plain), atol=1e-5)


def test_permutation_bijection_at_224() -> None:
    tau = make_transform("permutation", 0, (224, 224, 3))
    assert sorted(tau.perm.tolist()) == list(range(224 * 224 * 3))
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    y = tau(x)
    np.testing.assert_array_equal(np.sort(y.ravel()), np.sort(x.ravel()))
    inv = np.argsort(tau.perm)
    np.testing.assert_array_equal(y.reshape(-1)[inv], x.reshape(-1))
    rot = make_transform("pixel_rotation", 0, (224, 224, 3))
    assert rot.Qs.astype(np.float32).nbytes == 224 * 224 * 9 * 4  # 1.8 MB: bounded memory


def test_per_host_sharding(folder: str) -> None:
    tr = I.scan_split(folder, "train")
    kw = dict(image_size=8, batch_size=4, seed=0, epochs=1)
    full = I.train_pipeline(tr, np.arange(len(tr)), **kw)
    parts = [I.train_pipeline(tr, np.arange(len(tr)), process_index=p, process_count=2, **kw)
             for p in (0, 1)]
    labels = sorted(np.concatenate([parts[p][s]["label"] for p in (0, 1)
                                    for s in range(len(parts[p]))]).tolist())
    assert labels == sorted(np.concatenate([full[s]["label"] for s in range(len(full))]))
    assert parts[0][0]["image"].shape == (2, 8, 8, 3)


# ----------------------------------------------------------------------------- streaming


def test_chunk_rows() -> None:
    assert [I.chunk_rows(b) for b in (1, 6, 32, 40, 100, 1024, 37)] == [1, 6, 32, 20, 25, 32, 1]


def _with_pid(ds):  # tag every image with the process that decoded it
    return ds.map(lambda e: {**e, "pid": np.int64(os.getpid())})


@pytest.mark.parametrize("batch,start,procs", [(4, 1, 3), (40, 1, 2)])
def test_stream_batches_processes_equal_threads(folder: str, batch: int, start: int,
                                                procs: int) -> None:
    """loader_processes: the batches from step `start` equal batches start.. of a thread run
    from 0 (so a resumed run reads what an uninterrupted one would), decoded in other
    processes. (4, 1, 3): 4-image chunks, 14 of them over 3 workers
    (uneven shares); (40, 1, 2): two 20-image chunks a batch."""
    import jax

    jax.devices()  # the parent has a JAX runtime when the workers start
    tr = I.scan_split(folder, "train")
    epochs = 6 if batch > 30 else 2
    ds = _with_pid(I.train_pipeline(tr, np.arange(len(tr)), image_size=8, batch_size=batch,
                                    seed=5, epochs=epochs, batched=False))
    n = (30 * epochs) // batch
    ref = list(I.stream_batches(ds, batch, 0, n, threads=2))
    it = I.stream_batches(ds, batch, start, n, threads=2, processes=procs)
    try:
        got = list(it)
    finally:
        it.close()
    assert len(got) == n - start and len(ref) == n
    for r, g in zip(ref[start:], got, strict=True):
        assert g["image"].shape == (batch, 8, 8, 3) and g["image"].dtype == np.float32
        np.testing.assert_array_equal(r["image"], g["image"])
        np.testing.assert_array_equal(r["label"], g["label"])
    assert set(np.concatenate([r["pid"] for r in ref]).tolist()) == {os.getpid()}
    pids = set(np.concatenate([g["pid"] for g in got]).tolist())
    assert os.getpid() not in pids and len(pids) == procs


def test_stream_batches_processes_data_error(tmp_path) -> None:
    """An unreadable image decoded in a loader process is the one-line DataError here."""
    root = I.write_synthetic(str(tmp_path), num_classes=2, train_per_class=4, val_per_class=1,
                             size=12)
    tr = I.scan_split(root, "train")
    with open(tr.paths[3], "wb") as fh:
        fh.write(b"not a jpeg")
    ds = I.train_pipeline(tr, np.arange(len(tr)), image_size=8, batch_size=4, seed=0,
                          epochs=1, batched=False)
    it = I.stream_batches(ds, 4, 0, 2, threads=1, processes=2)
    try:
        with pytest.raises(DataError) as ex:
            list(it)
    finally:
        it.close()
    assert "cannot be decoded" in _msg(ex) and "replace or delete" in _msg(ex)


def test_loader_processes_memory() -> None:
    """A trial's host-memory request grows by each worker process and its chunks."""
    from workers.memory import LOADER_WORKER_BYTES, imagenet_trial_bytes

    cfg = dict(arch="resnet18", width=4, image_size=32, num_classes=10, batch_size=100,
               eval_batch_size=50)
    extra = imagenet_trial_bytes({**cfg, "loader_processes": 3}) - imagenet_trial_bytes(cfg)
    img = 4 * 32 * 32 * 3
    # training workers: chunks of 25 images; evaluation workers: eval batches of 50
    assert extra == 3 * (LOADER_WORKER_BYTES + 3 * 25 * img) + 3 * (LOADER_WORKER_BYTES
                                                                    + 3 * 50 * img)


def test_loader_processes_is_a_checked_key() -> None:
    from orchestrator.spec import check_overrides
    from workers.errors import ConfigError
    from workers.imagenet_train import resolve_config

    assert check_overrides({"loader_processes": 8}) == {"loader_processes": 8}
    with pytest.raises(ConfigError, match="loader_processes must be >= 0"):
        check_overrides({"loader_processes": -1})
    with pytest.raises(ConfigError, match="loader_processes must be >= 0"):
        resolve_config({"data_dir": "x", "loader_processes": -1})


# ----------------------------------------------------------------------------- models

PUBLISHED = {  # torchvision / Keras; Mixer: Tolstikhin et al. (2021), Table 1
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_resnet_param_counts(arch: str) -> None:
    assert param_count(make_imagenet_model(arch)) == PUBLISHED[arch]


def test_resnet200_and_mixer_param_counts() -> None:
    assert abs(param_count(make_imagenet_model("resnet200")) - 64.7e6) < 0.05e6
    assert abs(param_count(make_imagenet_model("mixer_s16")) - 18.5e6) < 0.05e6
    b16 = make_imagenet_model("mixer_s16", width=768, depth=12)
    assert abs(param_count(b16) - 59.9e6) < 0.05e6


@pytest.mark.parametrize("arch,kw", [("resnet18", dict(width=4)), ("resnet50", dict(width=2)),
                                     ("resnet200", dict(width=2)),
                                     ("mixer_s16", dict(width=8, depth=2, patch_size=4))])
def test_model_shapes(arch: str, kw: dict) -> None:
    model = make_imagenet_model(arch, num_classes=5, **kw)
    v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (16, 16, 3)))
    x = jax.ShapeDtypeStruct((3, 16, 16, 3), np.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x).shape == (3, 5)
    assert ("batch_stats" in v) == arch.startswith("resnet")


def test_resnet_forward_and_batch_stats() -> None:
    model = make_imagenet_model("resnet18", num_classes=5, width=2)
    v = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert out.shape == (3, 5) and np.isfinite(np.asarray(out)).all()
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()),
                                   upd["batch_stats"], v["batch_stats"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0  # running statistics were updated


def test_unknown_arch() -> None:
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="choose from resnet18"):
        make_imagenet_model("resnet19")


def test_synthetic_val_shares_the_training_classes() -> None:
    # a nearest-class-mean classifier on the (resized) pixels, fitted on train, must beat
    # chance on val by far (val images are new draws of the same classes, not new classes)
    tr, ltr = I.synthetic_images(4, 24, 16, seed=0, draw=0)
    va, lva = I.synthetic_images(4, 24, 16, seed=0, draw=1)
    feat = lambda imgs: np.stack([I.eval_view(im, 8).ravel() / 255.0  # noqa: E731
                                  for im in imgs])
    means = np.stack([feat(tr)[ltr == c].mean(0) for c in range(4)])
    pred = np.argmin(((feat(va)[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == lva).mean() > 0.6
    assert not np.array_equal(tr[0], va[0])
