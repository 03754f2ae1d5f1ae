"""The ImageNet loader through the real gcsfs client (the one the GCP cluster's nodes use),
against gcp-storage-emulator's JSON API on 127.0.0.1 (no network, no account): the same scan and
batches as the local folder, and a missing prefix or bucket as the pre-flight's one line.
(The emulator does not check credentials: denied access and missing credentials are covered by
tests/test_imagenet_s3.py with the real s3fs and by the stand-in bucket.)"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from bucket_helpers import assert_bucket_reads_like_local
from etils.epath import backend as epath_backend

from workers import imagenet as I
from workers.errors import DataError


def _fresh_clients() -> None:
    # etils keeps one filesystem per protocol, fsspec one instance per class and arguments
    import fsspec

    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    fsspec.get_filesystem_class("gcs").clear_instance_cache()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The emulator in a thread of this process, holding bucket ``lab`` with a tiny
    ImageNet-layout folder under ``imnet/``; yields (its URL, the local copy)."""
    from gcp_storage_emulator.server import Server

    with socket.socket() as s:  # a free port (the server takes a fixed one)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server("127.0.0.1", port, in_memory=True, default_bucket="lab")
    server.start()
    local = I.write_synthetic(str(tmp_path_factory.mktemp("imnet-gcs")), num_classes=3,
                              train_per_class=4, val_per_class=2, size=16)
    yield f"http://127.0.0.1:{port}", local
    server.stop()


@pytest.fixture
def gcs(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every Google Cloud Storage client of this process pointed at the emulator (gcsfs and
    google-cloud-storage read STORAGE_EMULATOR_HOST), the folder uploaded; the local copy."""
    url, local = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata-server probe for credentials
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    _fresh_clients()
    import fsspec

    fs = fsspec.filesystem("gcs")
    if not fs.exists("lab/imnet/val"):
        fs.put(local.rstrip("/") + "/", "lab/imnet", recursive=True)
    yield local
    _fresh_clients()


def test_a_bucket_through_gcsfs_reads_like_the_local_folder(gcs: str) -> None:
    url, local = "gs://lab/imnet", gcs
    assert_bucket_reads_like_local(url, local)


@pytest.mark.parametrize("url", ["gs://lab/nowhere", "gs://no-such-bucket/imnet"])
def test_a_missing_prefix_or_bucket_is_one_line(url: str, gcs: str) -> None:
    with pytest.raises(DataError) as ex:
        I.check_data_dir(url)
    text = str(ex.value)
    assert "\n" not in text and f"has no train/ folder ({url}/train not found)" in text


def test_the_emulator_is_what_answered(gcs: str) -> None:
    """Not vacuous: the objects are in the emulator, not in a local folder named like them."""
    import fsspec

    assert not os.path.exists("lab") and not os.path.exists("gs:")
    assert len(fsspec.filesystem("gcs").find("lab/imnet/val")) == 6
