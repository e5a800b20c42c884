"""Storing a model from its parts and reading it back without copies, on both stores."""

from __future__ import annotations

import hashlib
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
    assert bytes(store.view(ref)) == joined == store.get(ref)
    assert store.put_parts(parts) == (ref, size)  # idempotent


def test_a_local_view_is_a_read_only_map_that_outlives_a_replacement(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    parts, joined = model_parts()
    ref, _ = store.put_parts(parts)
    view = store.view(ref)
    assert isinstance(view, memoryview) and view.readonly
    store.delete(ref)  # writers replace or unlink files, never rewrite them: the map stays valid
    assert bytes(view) == joined
    with pytest.raises(StorageError, match="not found"):
        store.view(ref)
    assert list(tmp_path.glob(".tmp-*")) == []


def test_an_empty_artifact_has_an_empty_view(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref, size = store.put_parts([])
    assert size == 0 and store.view(ref) == b""
