"""The ImageNet loader through the real s3fs / aiobotocore client, against moto's S3 server on
127.0.0.1 (no network, no account).

tests/test_imagenet_remote.py replaces fsspec's backend by a stand-in that raises the errors
the storage clients are documented to raise; here the locked client itself talks S3's HTTP
API, so the pre-flight's mapping of what it really raises (404 on a missing prefix or bucket,
botocore's NoCredentialsError, a 403) and the batches read over it are checked against an
independent implementation of the protocol."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from bucket_helpers import assert_bucket_reads_like_local
from etils.epath import backend as epath_backend

from workers import imagenet as I
from workers.errors import DataError


@pytest.fixture(scope="module")
def endpoint() -> Any:
    """moto's S3 server in a thread of this process, on a free port; its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _fresh_clients() -> None:
    # etils keeps one filesystem per protocol and fsspec one instance per class and
    # arguments: both would keep the credentials of an earlier test
    from s3fs import S3FileSystem

    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 client of the server, and every AWS client of this process pointed at it with
    test credentials (none of the user's ~/.aws, no instance metadata)."""
    import boto3

    env = dict(AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    _fresh_clients()
    yield boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    _fresh_clients()


@pytest.fixture(scope="module")
def imnet(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("imnet-s3"))
    return I.write_synthetic(root, num_classes=3, train_per_class=4, val_per_class=2, size=16)


def _upload(client: Any, src: str, bucket: str, prefix: str) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for dirpath, _, files in os.walk(src):
        for f in files:
            full = os.path.join(dirpath, f)
            client.upload_file(full, bucket, f"{prefix}/{os.path.relpath(full, src)}")


def _msg(ex: pytest.ExceptionInfo) -> str:
    text = str(ex.value)
    assert "\n" not in text, text
    return text


def test_a_bucket_through_s3fs_reads_like_the_local_folder(s3: Any, imnet: str) -> None:
    _upload(s3, imnet, "lab", "imnet")
    url = "s3://lab/imnet"
    assert_bucket_reads_like_local(url, imnet)


@pytest.mark.parametrize("url", ["s3://lab/nowhere", "s3://no-such-bucket/imnet"])
def test_a_missing_prefix_or_bucket_is_one_line(url: str, s3: Any, imnet: str) -> None:
    _upload(s3, imnet, "lab", "imnet")
    with pytest.raises(DataError) as ex:
        I.check_data_dir(url)
    assert f"has no train/ folder ({url}/train not found)" in _msg(ex)


def test_no_credentials_is_one_line(s3: Any, imnet: str, monkeypatch) -> None:
    _upload(s3, imnet, "lab", "imnet")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _fresh_clients()
    with pytest.raises(DataError) as ex:
        I.check_data_dir("s3://lab/imnet")
    m = _msg(ex)
    assert "s3://lab/imnet/train cannot be checked (NoCredentialsError: Unable to locate " \
           "credentials)" in m and "credentials can read it" in m


def test_denied_access_is_one_line(s3: Any, imnet: str, endpoint: str) -> None:
    """moto checks every request's key from now on (its documented reset-auth switch): the
    test key is unknown to it, so S3 answers 403, which s3fs raises as PermissionError."""
    import requests

    _upload(s3, imnet, "lab", "imnet")
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=30).raise_for_status()
    try:
        with pytest.raises(DataError) as ex:
            I.check_data_dir("s3://lab/imnet")
        assert "access to s3://lab/imnet/train denied (PermissionError: " in _msg(ex)
        with pytest.raises(DataError) as ex:
            I.scan_split("s3://lab/imnet", "val")  # the same line inside a trial
        assert "access to s3://lab/imnet/train denied" in _msg(ex)
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf",
                      timeout=30).raise_for_status()
