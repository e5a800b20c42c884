"""Content-addressed artifact stores: bytes in, ``sha256:<hex>`` reference out.

Models, checkpoints, uploaded data sets and claim-checked payloads all live here. Addressing by
digest makes writes idempotent (a retried upload is free) and lets every reader verify what it got.
The local store is the embedded default, for the nodes of one machine; ``S3ArtifactStore``
(storage/s3_artifacts.py) is for production, where clients hold no credentials, only presigned URLs
(docs/networked.md, "Claim checks"). Both are synchronous (file and HTTP I/O): async callers use ``asyncio.to_thread``.
``artifact_store_from_url`` picks one from a URL, so scaling out changes a setting, not code.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

from fedhive.errors import ConfigError, StorageError

_REF = re.compile(r"^sha256:([0-9a-f]{64})$")
_AREA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SPARES = ".spare"
_SHARD = re.compile(r"^[0-9a-f]{2}$")
_CHUNK = 1 << 20  # fits in a CPU cache: hashed, then written while still there
# Owner only: on a machine shared with other accounts, nobody else lists, reads or replaces
# artifacts. Stored files are read-only even for the owner: nothing rewrites one in place.
_DIR_MODE = 0o700
_FILE_MODE = 0o400
_WRITING_MODE = 0o600


def ref_for(digest: str) -> str:
    return f"sha256:{digest}"


def check_area(area: str) -> str:
    """``area`` if it can name a sub-store (a directory, a key prefix) without clashing with the
    two-hex-digit directories of artifacts themselves; else ``ConfigError``."""
    if not _AREA.match(area) or re.fullmatch(r"[0-9a-f]{2}", area):
        raise ConfigError(f"artifact area {area!r} is not a valid name (letters, digits, . _ -; not two hex digits)")
    return area


def digest_of(ref: str) -> str:
    m = _REF.match(ref)
    if not m:
        raise StorageError(f"malformed artifact reference {ref!r} (expected sha256:<64 hex digits>)")
    return m.group(1)


class ArtifactStore(Protocol):
    def put(self, data: bytes | memoryview, *, digest: str | None = None) -> str:
        """Store ``data``; returns its reference. ``digest`` skips re-hashing when already known."""
        ...

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
        """Store the concatenation of ``parts`` without joining them in memory: (reference, size)."""
        ...

    def get(self, ref: str) -> bytes:
        """The artifact's bytes in the caller's own memory: a copy nobody else can change after
        the caller has checked its digest (never a shared memory map)."""
        ...

    def exists(self, ref: str) -> bool: ...

    def delete(self, ref: str) -> None: ...

    def recycle(self, ref: str) -> None:
        """Like ``delete``, from the last reader of the artifact: nobody reads it any more, so the
        store may reuse its space for a later write (see ``LocalArtifactStore``)."""
        ...

    def scoped(self, area: str) -> ArtifactStore:
        """A store of its own under ``area`` (a name), e.g. for transient claim checks, which are
        recycled, apart from models and data sets, which are not."""
        ...

    def sweep(self, older_than_s: float) -> int:
        """Delete this store's artifacts last written more than ``older_than_s`` ago (not those of
        sub-stores); returns how many. For transient areas only: claim checks left by a crash."""
        ...


@runtime_checkable
class PresigningStore(Protocol):
    """A store that can let a node without credentials read one artifact or write one object,
    through a URL that opens exactly that (S3). A coordinator with such a store hands clients
    URLs instead of credentials (transports/wire_codec.py)."""

    def presign_get(self, ref: str, expires_s: float) -> str: ...

    def upload_key(self, owner: str, round: int) -> str:
        """A new object key for ``owner``'s answer in ``round``, unguessable, never reused."""
        ...

    def presign_put(self, key: str, expires_s: float) -> str: ...

    def read_key(self, key: str, *, max_bytes: int) -> bytes: ...

    def delete_key(self, key: str) -> None: ...


class LocalArtifactStore:
    """Files under ``root/ab/cdef...``; written to a temp file and renamed, so never half-written.

    For the nodes of one machine. Directories are the owner's only (0700) and stored files
    read-only (0400): other accounts on the machine can neither read nor replace them. Processes
    of the same account can (they could as well read its memory): such a store protects nothing
    between them, which is why readers check digests on their own copy (``get``), never on a
    file or a map another process could still change. Across machines, use S3.

    A recycled artifact's file is kept aside as a spare (at most ``MAX_SPARES``) and the next
    ``put``/``put_parts`` writes into it instead of a new file: overwriting pages the kernel already
    holds is far cheaper than growing a new file (measured on a 2-core VM: 8 ms instead of 240 ms
    for 100 MB), and a claim-checked model is written once per client and round.
    """

    MAX_SPARES = 16

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create artifact directory {self.root}: {exc.strerror}") from exc

    def _path(self, ref: str) -> Path:
        d = digest_of(ref)
        return self.root / d[:2] / d[2:]

    def put(self, data: bytes | memoryview, *, digest: str | None = None) -> str:
        digest = digest or hashlib.sha256(data).hexdigest()
        ref = ref_for(digest)
        path = self._path(ref)
        if _touch(path):  # stored already; written again now, as far as ``sweep`` is concerned
            return ref
        try:
            path.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
            fd, tmp = self._temp_file()
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.truncate()  # a spare may have been longer
                # Models and checkpoints come this way: on disk before the rename makes them visible.
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), _FILE_MODE)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {ref}: {exc.strerror}") from exc
        return ref

    def _temp_file(self) -> tuple[int, str]:
        """A file to write a new artifact into, then rename: a spare if there is one, else new."""
        spares = self.root / _SPARES
        try:
            names = os.listdir(spares)
        except FileNotFoundError:
            names = []
        for name in names:
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                os.rename(spares / name, tmp)  # atomic: of several writers, one gets it
                os.chmod(tmp, _WRITING_MODE)  # stored read-only; nobody reads a spare
            except FileNotFoundError:
                continue
            return os.open(tmp, os.O_WRONLY), str(tmp)
        return tempfile.mkstemp(dir=self.root, prefix=".tmp-")  # mode 0600

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
        # Hash and write chunk by chunk: each chunk is read from memory once for both, where
        # hashing a joined copy and then writing it would read a 100 MB model three times.
        digest, size = hashlib.sha256(), 0
        try:
            fd, tmp = self._temp_file()
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    view = memoryview(part).cast("B")
                    for start in range(0, len(view), _CHUNK):
                        chunk = view[start : start + _CHUNK]
                        digest.update(chunk)
                        f.write(chunk)
                    size += len(view)
                f.truncate()  # a spare may have been longer
                # No fsync: this is the claim-check path, transient payloads a crash loses nothing by
                # (they are swept at the next start); a 100 MB fsync would cost a round 0.5 s or more.
                os.fchmod(f.fileno(), _FILE_MODE)
            ref = ref_for(digest.hexdigest())
            path = self._path(ref)
            if _touch(path):  # the same bytes are stored already: keep the written file as a spare
                self._spare(Path(tmp))
            else:
                path.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
                os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write artifact to {self.root}: {exc.strerror}") from exc
        return ref, size

    def get(self, ref: str) -> bytes:
        # A private copy, not a memory map: a map shows whatever the file holds when it is read,
        # so a digest checked on it says nothing about what is decoded from it a moment later.
        try:
            return self._path(ref).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"artifact {ref} not found in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read artifact {ref}: {exc.strerror}") from exc

    def exists(self, ref: str) -> bool:
        return self._path(ref).exists()

    def delete(self, ref: str) -> None:
        self._path(ref).unlink(missing_ok=True)

    def recycle(self, ref: str) -> None:
        try:
            self._spare(self._path(ref))
        except FileNotFoundError:
            pass  # already gone: recycled by an earlier message that named the same bytes
        except OSError as exc:
            raise StorageError(f"cannot recycle artifact {ref}: {exc.strerror}") from exc

    def _spare(self, path: Path) -> None:
        """Keep ``path`` (nobody reads it) as a spare for a later write, or delete it if there are
        spares enough."""
        spares = self.root / _SPARES
        spares.mkdir(mode=_DIR_MODE, exist_ok=True)
        if len(os.listdir(spares)) >= self.MAX_SPARES:
            path.unlink()
        else:
            os.replace(path, spares / uuid.uuid4().hex)

    def scoped(self, area: str) -> LocalArtifactStore:
        return LocalArtifactStore(self.root / check_area(area))

    def sweep(self, older_than_s: float) -> int:
        horizon, removed = time.time() - older_than_s, 0
        try:
            for entry in os.scandir(self.root):
                # artifacts live in two-hex-digit directories; ".tmp-*" files are writes a crash cut off
                if entry.is_dir() and _SHARD.match(entry.name):
                    candidates = list(os.scandir(entry.path))
                elif entry.is_file() and entry.name.startswith(".tmp-"):
                    candidates = [entry]
                else:
                    continue  # spares, and sub-stores, which sweep themselves if they want
                for f in candidates:
                    if f.stat().st_mtime < horizon:
                        Path(f.path).unlink(missing_ok=True)
                        removed += 1
        except OSError as exc:
            raise StorageError(f"cannot sweep artifacts in {self.root}: {exc.strerror}") from exc
        return removed


def _touch(path: Path) -> bool:
    """Mark ``path`` as written now; False if it does not exist."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


_S3_OPTIONS = {"endpoint", "region"}


def artifact_store_from_url(url: str | Path) -> ArtifactStore:
    """The store a URL names:

    - ``/var/lib/fedhive/artifacts`` or ``file:///var/lib/fedhive/artifacts``: a local directory;
    - ``s3://bucket/optional/prefix?endpoint=http://minio:9000&region=eu-west-1``: an S3 bucket.
      ``endpoint`` is for S3-compatible servers (MinIO, Ceph); without it boto3 uses AWS, or
      ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set. Credentials are never part of the
      URL (it ends up in logs and process lists): boto3 reads ``AWS_ACCESS_KEY_ID``,
      ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (or ``AWS_PROFILE``, ``~/.aws``, an
      instance role); ``region`` defaults to ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.

    The bucket is created on the first write if it does not exist.
    """
    text = str(url)
    parts = urlsplit(text)
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and text[1:2] == ":"):  # path, or C:\...
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"artifact URL {text!r}: file URLs name a local path (file:///abs/path)")
            return LocalArtifactStore(unquote(parts.path))
        return LocalArtifactStore(Path(text).expanduser())
    if parts.scheme != "s3":
        raise ConfigError(f"artifact URL {text!r}: unsupported scheme {parts.scheme!r} (use a path, file:// or s3://)")
    if "@" in parts.netloc:
        raise ConfigError(
            "artifact URL: put no credentials in an s3:// URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not parts.netloc:
        raise ConfigError(f"artifact URL {text!r}: no bucket (s3://bucket/prefix)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - _S3_OPTIONS
    if unknown:
        raise ConfigError(f"artifact URL {text!r}: unknown option(s) {sorted(unknown)} (known: endpoint, region)")
    options = {k: v[-1] for k, v in query.items() if v and v[-1]}

    from fedhive.storage.s3_artifacts import S3ArtifactStore  # boto3 loads only when S3 is used

    return S3ArtifactStore(
        parts.netloc, prefix=unquote(parts.path), endpoint_url=options.get("endpoint"), region=options.get("region")
    )
