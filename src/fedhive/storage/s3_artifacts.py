"""Artifacts in an S3 bucket (AWS, MinIO, Ceph, or any S3-compatible server).

Keys are ``{prefix}sha256/ab/cdef...`` (the digest split like the local store's directories), so
a bucket can be shared with other data and listed by prefix. What is read back is hashed and
compared with its reference: a tampered or truncated object raises ``StorageError`` instead of
reaching a model.

Clients hold no credentials for the bucket (docs/networked.md, "Claim checks"): the coordinator,
which does, hands each of them per message a presigned GET URL for the payload it sends
(``presign_get``) and a presigned PUT URL for an object only that client's answer goes to
(``upload_key``, ``presign_put``: ``{prefix}uploads/<client>/<round>-<nonce>``). A presigned URL
opens one key with one method until it expires, so holding one reads or writes nothing else.

Only this module imports boto3; every botocore and boto3 error is mapped here to a one-line
``StorageError`` naming the operation and the object (never the credentials).
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from fedhive.errors import StorageError
from fedhive.storage.artifacts import check_area, digest_of, ref_for

MiB = 1 << 20
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
_BOTO_ERRORS = (BotoCoreError, ClientError, Boto3Error)
_OWNER_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
UPLOADS = "uploads/"  # under the store's prefix: objects written through presigned PUT URLs


class S3ArtifactStore:
    """The ``ArtifactStore`` protocol over S3. Credentials not given here come from boto3's usual
    chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
    ``AWS_PROFILE`` and ``~/.aws``, or an instance role."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
        multipart_threshold: int = 8 * MiB,
    ) -> None:
        if not bucket:
            raise StorageError("S3 artifact store: the bucket name is empty")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self._secrets = tuple(s for s in (secret_key,) if s)
        config = Config(
            signature_version="s3v4",  # presigned URLs too: SigV2 ones are refused by newer regions
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # Self-hosted servers (MinIO, Ceph) are addressed by path, not by virtual host, and
            # some reject the CRC trailers boto3 adds by default; our own sha256 check covers integrity.
            s3={"addressing_style": "path"} if endpoint_url else {},
            request_checksum_calculation="when_required" if endpoint_url else "when_supported",
            response_checksum_validation="when_required" if endpoint_url else "when_supported",
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
            )
            self._s3: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        except _BOTO_ERRORS as exc:
            self._fail("cannot configure S3 client for", f"s3://{bucket}/{self.prefix}", exc)
        # Multipart above the threshold: parts upload in parallel and a failed part is retried alone.
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold
        )
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"S3ArtifactStore(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url or 'AWS'})"

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
        data = b"".join(parts)  # an upload needs one buffer (or a file); S3 is not the fast path
        return self.put(data), len(data)

    def key(self, ref: str) -> str:
        d = digest_of(ref)
        return f"{self.prefix}sha256/{d[:2]}/{d[2:]}"

    def _where(self, ref: str) -> str:
        return f"s3://{self.bucket}/{self.key(ref)}"

    def _fail(self, what: str, where: str, exc: Exception) -> NoReturn:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            reason = f"{err.get('Code', '?')} {err.get('Message', '')}".strip()
        elif isinstance(exc, NoCredentialsError):
            reason = "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        endpoint = f" (endpoint {self.endpoint_url})" if self.endpoint_url else ""
        raise StorageError(f"{what} {where}{endpoint}: {reason}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (safe to call from several processes at once)."""
        where = f"s3://{self.bucket}"
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                self._fail("cannot access bucket", where, exc)
            self._create_bucket()
        except _BOTO_ERRORS as exc:
            self._fail("cannot access bucket", where, exc)
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":  # us-east-1 refuses an explicit constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._s3.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._fail("cannot create bucket", f"s3://{self.bucket}", exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot create bucket", f"s3://{self.bucket}", exc)

    def _size(self, ref: str) -> int | None:
        """The stored object's size, or None when there is none."""
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=self.key(ref))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            self._fail("cannot look up artifact", self._where(ref), exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot look up artifact", self._where(ref), exc)
        return int(head["ContentLength"])

    def put(self, data: bytes | memoryview, *, digest: str | None = None) -> str:
        digest = digest or hashlib.sha256(data).hexdigest()
        ref = ref_for(digest)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        # Content addressing makes a retried upload free; a size mismatch means a damaged copy,
        # which is overwritten.
        if self._size(ref) == size:
            return ref
        if not self._bucket_ready:
            self.ensure_bucket()
        try:
            self._s3.upload_fileobj(
                io.BytesIO(data),
                self.bucket,
                self.key(ref),
                ExtraArgs={"ContentType": "application/octet-stream", "Metadata": {"sha256": digest}},
                Config=self._transfer,
            )
        except _BOTO_ERRORS as exc:
            self._fail("cannot write artifact", self._where(ref), exc)
        return ref

    def get(self, ref: str) -> bytes:
        buf = io.BytesIO()
        try:
            # Ranged GETs in parallel for large objects, one GET for small ones.
            self._s3.download_fileobj(self.bucket, self.key(ref), buf, Config=self._transfer)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise StorageError(f"artifact {ref} not found in s3://{self.bucket}/{self.prefix}") from None
            self._fail("cannot read artifact", self._where(ref), exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot read artifact", self._where(ref), exc)
        data = buf.getvalue()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest_of(ref):
            raise StorageError(
                f"artifact {self._where(ref)} is corrupt: its {len(data)} bytes hash to sha256:{actual}, not {ref}"
            )
        return data

    def read_key(self, key: str, *, max_bytes: int) -> bytes:
        """An object by its full key, outside the content-addressed area (no digest to check)."""
        where = f"s3://{self.bucket}/{key}"
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=key)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise StorageError(f"{where} is {head['ContentLength']} bytes, over the {max_bytes} bytes allowed")
            return bytes(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise StorageError(f"{where} does not exist") from None
            self._fail("cannot read", where, exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot read", where, exc)

    def presign_get(self, ref: str, expires_s: float) -> str:
        return self._presign("get_object", self.key(ref), expires_s)

    def upload_key(self, owner: str, round: int) -> str:
        # The owner's id is part of the key only to make the bucket readable to an operator; what
        # makes the key the owner's is that the coordinator issued it to that owner alone.
        safe = _OWNER_UNSAFE.sub("_", owner)[:64] or "_"
        return f"{self.prefix}{UPLOADS}{safe}/{round}-{secrets.token_hex(16)}"

    def presign_put(self, key: str, expires_s: float) -> str:
        if not key.startswith(self.prefix + UPLOADS):
            raise StorageError(f"refusing to presign a write outside s3://{self.bucket}/{self.prefix}{UPLOADS}")
        if not self._bucket_ready:
            self.ensure_bucket()  # the client's PUT cannot create it
        return self._presign("put_object", key, expires_s)

    def _presign(self, operation: str, key: str, expires_s: float) -> str:
        try:
            url: str = self._s3.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=max(1, int(expires_s))
            )
        except _BOTO_ERRORS as exc:
            self._fail("cannot presign a URL for", f"s3://{self.bucket}/{key}", exc)
        return url

    def delete_key(self, key: str) -> None:
        """Delete one object by its full key (an upload); no error if it is gone."""
        where = f"s3://{self.bucket}/{key}"
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                self._fail("cannot delete", where, exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot delete", where, exc)

    def exists(self, ref: str) -> bool:
        return self._size(ref) is not None

    def delete(self, ref: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.key(ref))  # no error if absent
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                self._fail("cannot delete artifact", self._where(ref), exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot delete artifact", self._where(ref), exc)

    def recycle(self, ref: str) -> None:
        self.delete(ref)  # S3 has no space of ours to reuse

    def sweep(self, older_than_s: float) -> int:
        where = f"s3://{self.bucket}/{self.prefix}"
        horizon = datetime.now(UTC) - timedelta(seconds=older_than_s)
        stale: list[dict[str, str]] = []
        try:
            for area in ("sha256/", UPLOADS):  # this store's artifacts, and its clients' uploads
                pages = self._s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=f"{self.prefix}{area}"
                )
                for page in pages:
                    stale += [{"Key": o["Key"]} for o in page.get("Contents", []) if o["LastModified"] < horizon]
            for start in range(0, len(stale), 1000):  # the most one request deletes
                self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": stale[start : start + 1000], "Quiet": True}
                )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:  # no bucket yet: nothing to sweep
                return 0
            self._fail("cannot sweep artifacts in", where, exc)
        except _BOTO_ERRORS as exc:
            self._fail("cannot sweep artifacts in", where, exc)
        return len(stale)

    def scoped(self, area: str) -> S3ArtifactStore:
        sub = copy.copy(self)  # the same client and bucket, a deeper prefix
        sub.prefix = f"{self.prefix}{check_area(area)}/"
        return sub


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def read_object(bucket: str, key: str, *, endpoint_url: str | None = None, max_bytes: int) -> bytes:
    """Blocking. One object by its key (not a content-addressed artifact): a seed model a user put
    in a bucket. ``StorageError`` in one line when it is missing, too large or unreadable."""
    return S3ArtifactStore(bucket, endpoint_url=endpoint_url).read_key(key, max_bytes=max_bytes)
