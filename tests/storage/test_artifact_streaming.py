"""Storing a model from its parts (no joined copy) and reading it back, on both stores; a local
artifact is an owner-only, read-only file, and what a reader gets is its own copy."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest
from test_s3_artifacts import make_store

from fedhive.core import codec
from fedhive.errors import StorageError
from fedhive.storage.artifacts import ArtifactStore, LocalArtifactStore


def model_parts() -> tuple[list[memoryview], bytes]:
    params = {"w": np.arange(3 << 18, dtype=np.float32), "b": np.ones(7, np.float32)}  # 3 MiB: several chunks
    return codec.encode_parts(params), codec.encode(params)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path)
    return make_store(request.getfixturevalue("s3"))


def test_parts_are_stored_as_their_concatenation(store: ArtifactStore) -> None:
    parts, joined = model_parts()
    ref, size = store.put_parts(parts)
    assert ref == "sha256:" + hashlib.sha256(joined).hexdigest() and size == len(joined)
    assert store.put(joined) == ref  # the same content-addressed artifact
    assert store.get(ref) == joined
    assert store.put_parts(parts) == (ref, size)  # idempotent


def test_a_local_artifact_is_an_owner_only_read_only_file_and_reads_are_private_copies(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    parts, joined = model_parts()
    ref, _ = store.put_parts(parts)
    path = store.root / ref[7:9] / ref[9:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 == stat.S_IMODE(store.root.stat().st_mode)
    copy = store.get(ref)
    store.delete(ref)
    assert copy == joined  # the reader's own bytes, whatever happens to the file
    with pytest.raises(StorageError, match="not found"):
        store.get(ref)
    assert list(store.root.glob(".tmp-*")) == []


def test_a_recycled_file_becomes_writable_again_only_as_a_spare(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"first payload")
    store.recycle(ref)
    again = store.put(b"second payload, written into the spare")
    path = store.root / again[7:9] / again[9:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o400 and store.get(again) == b"second payload, written into the spare"


def test_an_empty_artifact_reads_as_empty(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref, size = store.put_parts([])
    assert size == 0 and store.get(ref) == b""
