"""Recycled artifacts become spare files that later writes reuse; sub-stores keep areas apart."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from fedhive.errors import ConfigError
from fedhive.storage.artifacts import LocalArtifactStore, ref_for


def test_a_recycled_file_is_reused_by_the_next_write(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    old = store.put(b"x" * 10_000)
    inode = (tmp_path / old[7:9] / old[9:]).stat().st_ino
    store.recycle(old)
    assert not store.exists(old) and len(list((tmp_path / ".spare").iterdir())) == 1
    new, size = store.put_parts([b"short ", memoryview(b"payload")])
    assert size == 13 and store.get(new) == b"short payload"  # the longer old content is cut off
    assert new == ref_for(hashlib.sha256(b"short payload").hexdigest())
    assert (tmp_path / new[7:9] / new[9:]).stat().st_ino == inode  # written into the spare
    assert list((tmp_path / ".spare").iterdir()) == []
    again = store.put(b"written into a new file: no spare left")
    assert store.get(again) == b"written into a new file: no spare left"


def test_recycling_is_idempotent_and_the_spares_are_bounded(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    refs = [store.put(str(i).encode()) for i in range(LocalArtifactStore.MAX_SPARES + 3)]
    for ref in refs:
        store.recycle(ref)
        store.recycle(ref)  # a second message naming the same bytes: nothing left to do
    assert not any(store.exists(r) for r in refs)
    assert len(list((tmp_path / ".spare").iterdir())) == LocalArtifactStore.MAX_SPARES


def test_sub_stores_are_apart_and_their_names_are_checked(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    claims = store.scoped("claims").scoped("ns-1.a_b")
    ref = claims.put(b"a claim check")
    assert claims.exists(ref) and not store.exists(ref)
    store.put(b"a claim check")  # the same bytes as a model: recycling the claim leaves it alone
    claims.recycle(ref)
    assert store.get(ref) == b"a claim check" and not claims.exists(ref)
    for bad in ("", "../up", "a/b", "ab", "0f", ".hidden", "x" * 200):
        with pytest.raises(ConfigError, match="artifact area"):
            store.scoped(bad)


def test_writing_bytes_that_are_stored_already_leaves_a_spare(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"the same update from two clients")
    again, _ = store.put_parts([b"the same update ", b"from two clients"])
    assert again == ref and store.get(ref) == b"the same update from two clients"
    assert len(list((tmp_path / ".spare").iterdir())) == 1  # the second write's file, kept for reuse


def test_sweep_deletes_what_was_last_written_long_ago(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    old, fresh = store.put(b"left by a crashed coordinator"), store.put(b"this round's model")
    again = store.put(b"written long ago, stored again now")
    abandoned = tmp_path / ".tmp-abandoned"
    abandoned.write_bytes(b"half a write")
    sub = store.scoped("other-area")
    theirs = sub.put(b"not ours to sweep")
    store.recycle(store.put(b"a spare"))
    hours_ago = time.time() - 7200
    for path in [
        tmp_path / old[7:9] / old[9:],
        tmp_path / again[7:9] / again[9:],
        abandoned,
        sub.root / theirs[7:9] / theirs[9:],
    ]:
        os.utime(path, (hours_ago, hours_ago))
    store.put(b"written long ago, stored again now")  # a second write refreshes its age

    assert store.sweep(3600) == 2  # the old artifact and the abandoned temporary file
    assert not store.exists(old) and not abandoned.exists()
    assert store.exists(fresh) and store.exists(again) and sub.exists(theirs)
    assert len(list((tmp_path / ".spare").iterdir())) == 1
