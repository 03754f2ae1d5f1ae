"""The ImageNet loader on object storage (gs://, s3://) without a network: a stand-in bucket.

For the test only, fsspec's 'gcs' and 's3' protocols are served by a local filesystem that maps
``gs://bucket/...`` (and ``s3://bucket/...``) onto a temporary folder, so the loader goes
through exactly the path it takes on a cluster: workers.imagenet -> etils.epath -> fsspec's
backend for the scheme. With it: the same batches and the same training run as the local
folder, the pre-flight errors of `check_data_dir` (missing backend, missing split, denied
access, no credentials, unknown scheme), the CLI's one line, and no local file call ever made
on a remote path (os.stat / open on a "gs:" string fail the test)."""

from __future__ import annotations

import builtins
import importlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import stringify_path

from workers import imagenet as I
from workers.errors import DataError

SCHEMES = ("gs://", "gcs://", "s3://")
# fsspec's protocol -> class table (``fsspec.registry`` is its read-only view; the module
# attribute shadows the module of the same name, hence import_module)
LOADED = importlib.import_module("fsspec.registry")._registry


class _Bucket(LocalFileSystem):
    """A bucket on local disk: ``gs://b/k`` is ``<root>/b/k``. ``errors`` maps a key prefix
    (``"b/imnet/val"``) to the exception every call below it raises, as the storage clients
    raise them (gcsfs: a 403 is a plain OSError with the server's JSON on further lines)."""

    protocol = ("gcs", "gs", "s3")
    root_marker = ""
    cachable = False  # a new root each test: no instance may outlive its fixture
    root = ""
    errors: dict[str, BaseException] = {}

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = stringify_path(path)
        for scheme in SCHEMES:
            if path.startswith(scheme):
                return f"{cls.root}/{path[len(scheme):]}".rstrip("/")
        if path.startswith(cls.root):  # fsspec hands back paths it already stripped
            return path.rstrip("/")
        raise AssertionError(f"{path!r} is not a bucket path")

    def _raise_for(self, path: Any) -> None:
        key = self._strip_protocol(path)[len(self.root) + 1:]
        for prefix, ex in self.errors.items():
            if key == prefix or key.startswith(prefix + "/"):
                raise ex

    def info(self, path: Any, **kwargs: Any) -> dict:
        self._raise_for(path)
        return super().info(path, **kwargs)

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> list:
        self._raise_for(path)
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path: Any, mode: str = "rb", **kwargs: Any) -> Any:
        self._raise_for(path)
        return super()._open(path, mode=mode, **kwargs)


def _forget_filesystems() -> None:
    # etils caches one fsspec filesystem per protocol (an lru_cache on the backend method)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def _no_local_calls_on_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.stat / os.scandir / os.listdir / open on a string holding a scheme fail the test: a
    code path that treats a URL as a local path would otherwise just see "no such folder"."""
    def guard(fn: Any) -> Any:
        def wrapped(p: Any = ".", *a: Any, **kw: Any) -> Any:
            if isinstance(p, str | os.PathLike) and any(
                    s in os.fspath(p) for s in ("gs:", "s3:", "gcs:")):
                raise AssertionError(f"a local file call on the remote path {p!r}")
            return fn(p, *a, **kw)
        return wrapped

    for name in ("stat", "scandir", "listdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stand-in bucket class (its ``root`` the local folder holding bucket ``bucket``),
    registered for 'gcs' and 's3' for this test only."""
    root = tmp_path / "buckets"
    (root / "bucket").mkdir(parents=True)
    fs_cls = type("Bucket", (_Bucket,), {"root": str(root), "errors": {}})
    # fsspec has no unregister; monkeypatch puts back (or removes) what was there
    for proto in ("gcs", "s3"):
        monkeypatch.setitem(LOADED, proto, fs_cls)
    _forget_filesystems()
    monkeypatch.chdir(tmp_path)  # nothing named gs: here either
    yield fs_cls
    _forget_filesystems()


@pytest.fixture(scope="module")
def imnet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny ImageNet-layout folder (3 classes, 8 + 3 images each), written once; each test
    copies it into its bucket."""
    root = str(tmp_path_factory.mktemp("imnet-src"))
    return I.write_synthetic(root, num_classes=3, train_per_class=8, val_per_class=3, size=16)


def _upload(src: str, bucket_cls: Any, key: str = "imnet") -> str:
    """Copy ``src`` into the bucket under ``key``; returns the local copy's path."""
    import shutil

    dst = os.path.join(bucket_cls.root, "bucket", key)
    shutil.copytree(src, dst)
    return dst


def _msg(ex: pytest.ExceptionInfo) -> str:
    text = str(ex.value)
    assert "\n" not in text, text  # one line for the CLI
    return text


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_scan_split_over_a_bucket_equals_the_local_folder(scheme: str, bucket: Any,
                                                         imnet: str, monkeypatch) -> None:
    local = _upload(imnet, bucket)
    url = f"{scheme}://bucket/imnet"
    _no_local_calls_on_urls(monkeypatch)
    for split in I.SPLITS:
        rem, loc = I.scan_split(url, split), I.scan_split(local, split)
        assert rem.classes == loc.classes and len(rem) == len(loc) > 0
        np.testing.assert_array_equal(rem.labels, loc.labels)
        assert [p.replace(url, local, 1) for p in rem.paths] == list(loc.paths)
        assert all(p.startswith(f"{scheme}://bucket/imnet/{split}/") for p in rem.paths)


def test_train_and_eval_batches_over_a_bucket_equal_the_local_ones(bucket: Any, imnet: str,
                                                                  monkeypatch) -> None:
    from workers.transforms import make_transform

    local = _upload(imnet, bucket)
    url = "gs://bucket/imnet"
    tau = make_transform("pixel_rotation", 3, image_shape=(12, 12, 3))
    tr_l, va_l = I.scan_split(local, "train"), I.scan_split(local, "val")
    _no_local_calls_on_urls(monkeypatch)
    tr_r, va_r = I.scan_split(url, "train"), I.scan_split(url, "val")
    idx = I.nested_subset(tr_l.labels, 16, seed=0)
    kw = dict(image_size=12, batch_size=4, seed=5, epochs=2, tau=tau)
    rem, loc = I.train_pipeline(tr_r, idx, **kw), I.train_pipeline(tr_l, idx, **kw)
    assert len(rem) == len(loc) == 8
    for s in range(len(loc)):
        a, b = rem[s], loc[s]
        assert a["image"].shape == (4, 12, 12, 3)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # the threaded reader (several images in flight at once) over the bucket
    el_r = I.train_pipeline(tr_r, idx, **kw, batched=False)
    streamed = list(I.stream_batches(el_r, 4, 2, 6, threads=3))
    assert len(streamed) == 4
    for k, batch in enumerate(streamed):
        np.testing.assert_array_equal(batch["image"], loc[2 + k]["image"])
    ev_r = I.eval_pipeline(va_r, image_size=12, batch_size=4, tau=tau)
    ev_l = I.eval_pipeline(va_l, image_size=12, batch_size=4, tau=tau)
    assert len(ev_r) == len(ev_l) == 3  # 9 images: 4 + 4 + 1
    for s in range(len(ev_l)):
        np.testing.assert_array_equal(ev_r[s]["image"], ev_l[s]["image"])
        np.testing.assert_array_equal(ev_r[s]["label"], ev_l[s]["label"])


def test_a_tiny_training_run_from_a_bucket_equals_the_local_run(bucket: Any, imnet: str,
                                                                tmp_path: Path,
                                                                monkeypatch) -> None:
    from workers.imagenet_train import train_imagenet

    local = _upload(imnet, bucket)
    # the smallest model that trains (a one-block Mixer compiles in seconds); pixel_rotation
    # so the per-pixel tau runs on the bucket's images too
    cfg = dict(arch="mixer_s16", width=8, depth=1, patch_size=4, image_size=12, epochs=2,
               batch_size=8, warmup_epochs=1, loader_threads=2, eval_batch_size=16, seed=1,
               transform="pixel_rotation", keep_checkpoints=0, cache_dir=str(tmp_path / "c"))
    loc = train_imagenet({**cfg, "data_dir": local, "work_dir": str(tmp_path / "l")})
    _no_local_calls_on_urls(monkeypatch)
    rem = train_imagenet({**cfg, "data_dir": "gs://bucket/imnet",
                          "work_dir": str(tmp_path / "r")})
    assert rem["status"] == loc["status"] == "completed"
    assert (rem["train_size"], rem["test_size"], rem["steps"]) == (24, 9, 6)
    assert (loc["train_size"], loc["test_size"], loc["steps"]) == (24, 9, 6)
    assert len(rem["history"]) == len(loc["history"]) == 2
    for a, b in zip(rem["history"], loc["history"], strict=True):
        assert set(a) == set(b) >= {"step", "epoch", "train_loss", "train_acc", "test_acc"}
        for k in ("step", "epoch", "train_loss", "train_acc", "test_acc"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (k, a, b)


# ----------------------------------------------------------------------------- pre-flight


@pytest.mark.parametrize("proto, pkg", [("gcs", "gcsfs"), ("s3", "s3fs")])
def test_the_locked_environment_has_the_real_backends(proto: str, pkg: str) -> None:
    """The locks carry the `cloud` extra: fsspec finds the real backend of each scheme (the
    tests below replace it by the stand-in bucket)."""
    found = importlib.import_module("fsspec").get_filesystem_class(proto)
    assert found.__module__.split(".")[0] == pkg


def test_preflight_accepts_a_bucket_folder(bucket: Any, imnet: str, monkeypatch) -> None:
    _upload(imnet, bucket)
    _no_local_calls_on_urls(monkeypatch)
    I.check_data_dir("gs://bucket/imnet")
    I.check_data_dir("s3://bucket/imnet/")


@pytest.mark.parametrize("missing", ["train", "val", "root"])
def test_preflight_names_a_missing_split(missing: str, bucket: Any, imnet: str,
                                         monkeypatch) -> None:
    import shutil

    local = _upload(imnet, bucket)
    if missing == "root":
        url = "gs://bucket/nowhere"
    else:
        shutil.rmtree(os.path.join(local, missing))
        url = "gs://bucket/imnet"
    _no_local_calls_on_urls(monkeypatch)
    with pytest.raises(DataError) as ex:
        I.check_data_dir(url)
    m = _msg(ex)
    split = "train" if missing == "root" else missing
    assert f"has no {split}/ folder ({url}/{split} not found)" in m
    assert url in m and "<root>/train/<wnid>/*.JPEG" in m


def test_preflight_refuses_a_file_where_a_split_should_be(bucket: Any, imnet: str) -> None:
    import shutil

    local = _upload(imnet, bucket)
    shutil.rmtree(os.path.join(local, "val"))
    Path(local, "val").write_text("not a folder")
    with pytest.raises(DataError) as ex:
        I.check_data_dir("gs://bucket/imnet")
    assert "gs://bucket/imnet/val is a file, not a folder" in _msg(ex)


def test_preflight_without_the_backend_names_the_lock(monkeypatch) -> None:
    """gcsfs that cannot be imported (as on an install without the cloud extra): fsspec's
    ImportError becomes one line naming the lock and the package."""
    monkeypatch.delitem(LOADED, "gcs", raising=False)
    monkeypatch.delitem(LOADED, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` raises ImportError
    monkeypatch.setitem(sys.modules, "s3fs", None)
    _forget_filesystems()
    try:
        for url, pkg in (("gs://bucket/imnet", "gcsfs"), ("s3://bucket/imnet", "s3fs")):
            with pytest.raises(DataError) as ex:
                I.check_data_dir(url)
            m = _msg(ex)
            assert f"needs the {pkg} package" in m and f"pip install {pkg}" in m
            assert "pip install --require-hashes -r requirements/gpu.txt" in m
    finally:
        _forget_filesystems()


@pytest.mark.parametrize("error, expect", [
    (PermissionError(13, "Access Denied"), "access to gs://bucket/imnet/val denied "
                                           "(PermissionError: [Errno 13] Access Denied)"),
    # gcsfs's 403: a plain OSError, the server's JSON on the next lines
    (OSError('Forbidden: b/imnet/val\n{\n  "message": "no storage.objects.get"\n}'),
     "gs://bucket/imnet/val cannot be checked (OSError: Forbidden: b/imnet/val { \"message\""),
])
def test_preflight_denied_access_is_one_line(error: BaseException, expect: str, bucket: Any,
                                             imnet: str) -> None:
    _upload(imnet, bucket)
    bucket.errors["bucket/imnet/val"] = error
    with pytest.raises(DataError) as ex:
        I.check_data_dir("gs://bucket/imnet")
    assert expect in _msg(ex)
    assert ex.value.__cause__ is error  # chained, not swallowed


def test_preflight_missing_credentials_is_one_line(bucket: Any, imnet: str) -> None:
    from google.auth.exceptions import DefaultCredentialsError

    _upload(imnet, bucket)
    bucket.errors["bucket"] = DefaultCredentialsError(
        "Your default credentials were not found.\nTo set up Application Default Credentials, "
        "see https://cloud.google.com/docs/authentication")
    with pytest.raises(DataError) as ex:
        I.check_data_dir("gs://bucket/imnet")
    m = _msg(ex)
    assert "gs://bucket/imnet/train cannot be checked (DefaultCredentialsError: Your default " \
           "credentials were not found. To set up" in m
    assert "credentials can read it" in m


def test_a_trial_without_access_stops_with_the_same_line(bucket: Any, imnet: str) -> None:
    """A worker node whose credentials cannot read the bucket (the driver's could): scan_split
    raises the pre-flight's DataError (not retried), not a traceback."""
    _upload(imnet, bucket)
    bucket.errors["bucket/imnet"] = PermissionError(13, "Access Denied")
    with pytest.raises(DataError) as ex:
        I.scan_split("gs://bucket/imnet", "train")
    assert "access to gs://bucket/imnet/train denied" in _msg(ex)


def test_reading_a_denied_image_in_a_trial_is_one_data_error(bucket: Any, imnet: str) -> None:
    _upload(imnet, bucket)
    folder = I.scan_split("gs://bucket/imnet", "val")
    bucket.errors[folder.paths[0][len("gs://"):]] = PermissionError(13, "Access Denied")
    ds = I.eval_pipeline(folder, image_size=8, batch_size=2)
    with pytest.raises(DataError) as ex:
        ds[0]
    assert folder.paths[0] in _msg(ex) and "cannot be read" in _msg(ex)


def test_a_network_failure_while_reading_is_left_to_the_trial_retry(bucket: Any,
                                                                     imnet: str) -> None:
    """A connection error that outlasted the client's retries is not the data's fault: it
    propagates (Tune retries the trial from its checkpoint) instead of a DataError, which
    would never be retried."""
    _upload(imnet, bucket)
    folder = I.scan_split("gs://bucket/imnet", "val")
    bucket.errors[folder.paths[0][len("gs://"):]] = ConnectionResetError(104, "reset by peer")
    ds = I.eval_pipeline(folder, image_size=8, batch_size=2)
    with pytest.raises(ConnectionResetError):
        ds[0]


@pytest.mark.parametrize("url", ["ftp://host/imnet", "http://host/imnet", "file:///data/imnet"])
def test_an_unknown_scheme_is_refused(url: str) -> None:
    """etils.epath has no backend for these (its own answer is a KeyError in every trial)."""
    for check in (I.check_data_dir, lambda u: I.scan_split(u, "train")):
        with pytest.raises(DataError) as ex:
            check(url)
        m = _msg(ex)
        assert f"{url.split('://')[0]}:// cannot be read" in m and "gs://, s3://" in m


# ----------------------------------------------------------------------------- the CLI


def test_run_with_a_missing_bucket_folder_is_one_line_and_writes_nothing(
        bucket: Any, tmp_path: Path, capsys) -> None:
    from faults.fault_helpers import one_line_error

    from orchestrator.cli import main

    results = tmp_path / "results"
    sweep = Path(__file__).resolve().parents[1] / "sweeps" / "figS4.py"
    rc = main(["run", str(sweep), "--preset", "paper", "--results", str(results),
               "--data-dir", "gs://bucket/nowhere", "--no-progress", "--no-report"])
    assert rc == 2
    one_line_error(capsys, "gs://bucket/nowhere", "has no train/ folder")
    assert not results.exists() or not any(results.rglob("*"))


def test_a_bucket_url_reaches_the_trials_as_a_url(bucket: Any, imnet: str, tmp_path: Path,
                                                  monkeypatch) -> None:
    """--data-dir gs://... goes into the driver's context (the manifest, every trial's config)
    unchanged, not made the absolute local path <cwd>/gs:/bucket/imnet."""
    from orchestrator.runner import run_sweep
    from orchestrator.spec import load_sweep
    from orchestrator.store import Store

    class Stop(Exception):
        pass

    def capture(self: Any, manifest: dict) -> None:
        seen.update(manifest)
        raise Stop  # before Ray or any trial

    _upload(imnet, bucket)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(Store, "write_manifest", capture)
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "figS4.py")
    with pytest.raises(Stop):
        run_sweep(sweep, "paper", results=str(tmp_path / "res"), data_dir="gs://bucket/imnet",
                  progress=False, tracking=False)
    assert seen["data_dir"] == "gs://bucket/imnet"
