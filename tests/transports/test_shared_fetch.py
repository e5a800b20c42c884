"""Receivers in one process that get the same claim-checked payload at once fetch and verify it
once; a receiver whose sharer failed still fetches from its own store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fedhive.core.envelope import Kind, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier
from fedhive.errors import StorageError
from fedhive.runtime.payloads import payload_params
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.wire_codec import WireCodec

SECRETS = {"coord": b"c" * 32, "alice": b"a" * 32, "bob": b"b" * 32}
MODEL = Params({"w": np.full(300_000, 0.25, np.float32)})


class CountingStore(LocalArtifactStore):
    def __init__(self, root: Path, *, missing: bool = False) -> None:
        super().__init__(root)
        self.reads = 0
        self.missing = missing

    def get(self, ref: str) -> bytes:
        self.reads += 1
        if self.missing:
            raise StorageError(f"no artifact {ref}")
        return super().get(ref)

    def scoped(self, area: str) -> CountingStore:
        return self


def codec(node: str, store: LocalArtifactStore) -> WireCodec:
    return WireCodec(lambda _to: SECRETS[node], Verifier(SECRETS.get), store, claim_check_bytes=1024)


async def frames_to(store: LocalArtifactStore, names: list[str]) -> list[bytes]:
    return await codec("coord", store).encode_many([(n, make(Kind.TRAIN, "coord", payload=MODEL)) for n in names])


async def test_concurrent_receivers_of_one_payload_fetch_it_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    for_alice, for_bob = await frames_to(store, ["alice", "bob"])
    alice, bob = codec("alice", store), codec("bob", store)
    got = await asyncio.gather(alice.decode(for_alice), bob.decode(for_bob))
    assert store.reads == 1  # fetched and hashed once for both
    for msg in got:
        np.testing.assert_array_equal(payload_params(msg, MODEL.spec, max_bytes=1 << 24, what="model")["w"], 0.25)
    await codec("bob", store).decode(for_bob)  # after the first fetch is over: fetched again, no cache
    assert store.reads == 2


async def test_a_receiver_whose_sharer_failed_fetches_from_its_own_store(tmp_path: Path) -> None:
    good = CountingStore(tmp_path / "good")
    broken = CountingStore(tmp_path / "good", missing=True)  # the same place, but it cannot read it
    for_alice, for_bob = await frames_to(good, ["alice", "bob"])
    results = await asyncio.gather(
        codec("alice", broken).decode(for_alice), codec("bob", good).decode(for_bob), return_exceptions=True
    )
    assert isinstance(results[0], StorageError)
    assert not isinstance(results[1], BaseException)
    assert payload_params(results[1], MODEL.spec, max_bytes=1 << 24, what="model")["w"][0] == 0.25


def corrupt_big_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size > 1_000_000:
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))


async def test_a_forged_payload_fails_every_receiver(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    for_alice, for_bob = await frames_to(store, ["alice", "bob"])
    corrupt_big_files(tmp_path)
    with pytest.raises(Exception, match="sha256 does not match"):
        await asyncio.gather(codec("alice", store).decode(for_alice), codec("bob", store).decode(for_bob))
