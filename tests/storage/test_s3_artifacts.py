"""S3ArtifactStore against a real S3 server (moto_server): content addressing, integrity, errors.

Tests that need the server take the ``s3`` fixture and are marked ``s3``; the others run anywhere."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from fedhive.errors import ConfigError, StorageError
from fedhive.storage.artifacts import LocalArtifactStore, artifact_store_from_url
from fedhive.storage.s3_artifacts import MiB, S3ArtifactStore

S3_KEY, S3_SECRET = "testing-key", "testing-secret-do-not-leak"


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the way production passes them: AWS environment variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


def new_bucket() -> str:
    return f"fedhive-test-{uuid.uuid4().hex[:12]}"


def make_store(endpoint: str, bucket: str | None = None, **kw: Any) -> S3ArtifactStore:
    return S3ArtifactStore(
        bucket or new_bucket(),
        endpoint_url=endpoint,
        region="us-east-1",
        access_key=S3_KEY,
        secret_key=S3_SECRET,
        **kw,
    )


def raw_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET
    )


def bucket_exists(endpoint: str, bucket: str) -> bool:
    names = [b["Name"] for b in raw_client(endpoint).list_buckets()["Buckets"]]
    return bucket in names


@pytest.mark.s3
def test_a_sub_store_has_its_own_prefix_and_recycling_deletes(s3: str) -> None:
    store = make_store(s3, prefix="team-a")
    claims = store.scoped("claims").scoped("ns-1")
    ref = claims.put(b"claim-checked update")
    assert claims.key(ref).startswith("team-a/claims/ns-1/sha256/")
    assert claims.exists(ref) and not store.exists(ref)
    claims.recycle(ref)
    assert not claims.exists(ref)
    claims.recycle(ref)  # gone already: not an error


@pytest.mark.s3
def test_sweep_deletes_objects_older_than_the_age(s3: str) -> None:
    store = make_store(s3, prefix="sweep")
    assert store.sweep(0) == 0  # no bucket yet: nothing to sweep
    refs = [store.put(f"claim {i}".encode()) for i in range(3)]
    other = store.scoped("elsewhere").put(b"in a sub-store")
    assert store.sweep(3600) == 0 and all(store.exists(r) for r in refs)
    time.sleep(1.1)  # S3 keeps whole seconds
    assert store.sweep(1) == 3
    assert not any(store.exists(r) for r in refs) and store.scoped("elsewhere").exists(other)


@pytest.mark.s3
def test_put_get_exists_delete_round_trip(s3: str) -> None:
    store = make_store(s3, prefix="team-a/artifacts")
    data = b"safetensors bytes \x00\x01\x02"
    ref = store.put(data)
    assert ref == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.key(ref).startswith("team-a/artifacts/sha256/" + ref[7:9] + "/")
    assert store.exists(ref)
    assert store.get(ref) == data
    store.delete(ref)
    assert not store.exists(ref)
    store.delete(ref)  # deleting what is gone is not an error
    with pytest.raises(StorageError, match="not found"):
        store.get(ref)


@pytest.mark.s3
def test_put_is_idempotent_and_skips_the_upload(s3: str) -> None:
    store = make_store(s3)
    ref = store.put(b"model v1")
    uploads: list[str] = []
    real_upload = store._s3.upload_fileobj
    store._s3.upload_fileobj = lambda *a, **kw: uploads.append(a[2]) or real_upload(*a, **kw)
    assert store.put(b"model v1") == ref
    assert store.put(memoryview(b"model v1"), digest=ref[7:]) == ref
    assert uploads == []
    assert store.put(b"model v2") != ref
    assert len(uploads) == 1


@pytest.mark.s3
def test_tampered_object_is_detected_on_get(s3: str) -> None:
    store = make_store(s3)
    ref = store.put(b"the real parameters")
    raw_client(s3).put_object(Bucket=store.bucket, Key=store.key(ref), Body=b"the evil parameters")
    with pytest.raises(StorageError, match="corrupt") as info:
        store.get(ref)
    assert ref in str(info.value) and "\n" not in str(info.value)


@pytest.mark.s3
def test_put_repairs_a_damaged_copy_of_another_size(s3: str) -> None:
    store = make_store(s3)
    ref = store.put(b"complete payload")
    raw_client(s3).put_object(Bucket=store.bucket, Key=store.key(ref), Body=b"compl")
    assert store.put(b"complete payload") == ref
    assert store.get(ref) == b"complete payload"


@pytest.mark.s3
def test_bucket_is_created_on_first_put(s3: str) -> None:
    bucket = new_bucket()
    store = make_store(s3, bucket)
    assert not bucket_exists(s3, bucket)
    assert not store.exists("sha256:" + "0" * 64)  # reading a missing bucket is "absent", not an error
    ref = store.put(b"seed model")
    assert bucket_exists(s3, bucket)
    assert store.get(ref) == b"seed model"
    store.ensure_bucket()  # and again: harmless


@pytest.mark.s3
def test_large_payload_goes_up_in_parts_and_comes_back_intact(s3: str) -> None:
    store = make_store(s3, multipart_threshold=8 * MiB)
    data = os.urandom(20 * MiB)
    ref = store.put(data)
    head = raw_client(s3).head_object(Bucket=store.bucket, Key=store.key(ref))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts (8 + 8 + 4 MiB)
    assert head["Metadata"]["sha256"] == ref[7:]
    assert store.get(ref) == data


def test_unreachable_endpoint_fails_fast_with_one_clear_line(unused_port: int) -> None:
    endpoint = f"http://127.0.0.1:{unused_port}"  # nothing listens there
    store = make_store(endpoint, connect_timeout_s=1, read_timeout_s=1, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.put(b"anything")
    message = str(info.value)
    assert time.monotonic() - started < 10
    assert endpoint in message and "cannot look up artifact" in message
    assert "\n" not in message and S3_SECRET not in message and S3_SECRET not in repr(store)
    with pytest.raises(StorageError, match="cannot read artifact"):
        store.get("sha256:" + "1" * 64)


def test_missing_credentials_are_named(unused_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe
    store = S3ArtifactStore(new_bucket(), endpoint_url=f"http://127.0.0.1:{unused_port}", region="us-east-1")
    with pytest.raises(StorageError, match=r"no credentials .*AWS_ACCESS_KEY_ID"):  # found before connecting
        store.put(b"x")


def test_malformed_reference_is_refused(unused_port: int) -> None:
    store = make_store(f"http://127.0.0.1:{unused_port}")
    with pytest.raises(StorageError, match="malformed artifact reference"):
        store.get("md5:abc")


@pytest.mark.s3
@pytest.mark.usefixtures("s3_env")
def test_url_selects_s3_with_credentials_from_the_environment(s3: str) -> None:
    bucket = new_bucket()
    store = artifact_store_from_url(f"s3://{bucket}/runs/2024?endpoint={s3}&region=us-east-1")
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.endpoint_url) == (bucket, "runs/2024/", s3)
    ref = store.put(b"claim-checked payload")
    assert artifact_store_from_url(f"s3://{bucket}/runs/2024?endpoint={s3}").get(ref) == b"claim-checked payload"


def test_url_selects_a_local_directory(tmp_path: Path) -> None:
    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'b'}", (tmp_path / "c").as_uri()):
        store = artifact_store_from_url(url)
        assert isinstance(store, LocalArtifactStore)
        assert store.get(store.put(b"local")) == b"local"
    assert {p.name for p in tmp_path.iterdir()} == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://KEY:hunter2@bucket/p", "no credentials"),
        ("s3://bucket/p?endpont=http://x", "unknown option"),
        ("s3:///prefix-only", "no bucket"),
        ("ftp://host/dir", "unsupported scheme"),
        ("file://otherhost/dir", "local path"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        artifact_store_from_url(url)
    assert "hunter2" not in str(info.value)
