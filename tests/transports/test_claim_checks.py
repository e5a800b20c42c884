"""Claim checks over a real RabbitMQ: one upload per broadcast, and deferred fetching at the receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from test_amqp import SECRETS, Broker, codec_for, params, recv

from fedhive.core.envelope import Deferred, Kind, make
from fedhive.core.signing import Verifier
from fedhive.errors import PayloadError
from fedhive.runtime.payloads import payload_params, payload_size
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.wire_codec import WireCodec

pytestmark = pytest.mark.amqp


class CountingStore(LocalArtifactStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0
        self.gets = 0

    def put(self, data: bytes | memoryview, *, digest: str | None = None) -> str:
        self.puts += 1
        return super().put(data, digest=digest)

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
        self.puts += 1
        return super().put_parts(parts)

    def get(self, ref: str) -> bytes:
        self.gets += 1
        return super().get(ref)

    def scoped(self, area: str) -> CountingStore:
        return self  # count the claims area's traffic here


@pytest.fixture
async def broker(rabbitmq_url: str) -> AsyncIterator[Broker]:
    b = Broker(rabbitmq_url)
    yield b
    await b.teardown()


async def test_a_payload_sent_to_many_is_uploaded_once(broker: Broker, tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    model = params(n=50_000, fill=0.5)
    coord = await broker.node("coord", codec_for("coord", artifacts=store, claim_check_bytes=1024))
    nodes = [await broker.node(n, codec_for(n, artifacts=store)) for n in ("alice", "bob")]
    results = await coord.send_many([(n.node_id, make(Kind.TRAIN, "coord", payload=model)) for n in nodes])
    assert results == [None, None]
    assert store.puts == 1  # serialised, hashed and written once for both recipients
    for node in nodes:
        got = await recv(node)
        assert payload_params(got, model.spec, max_bytes=1 << 20, what="model")["w"][0] == 0.5


async def test_a_deferring_receiver_fetches_only_when_the_payload_is_used(broker: Broker, tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    deferring = WireCodec(lambda _to: SECRETS["coord"], Verifier(SECRETS.get), store, defer_references=True)
    coord = await broker.node("coord", deferring)
    alice = await broker.node("alice", codec_for("alice", artifacts=store, claim_check_bytes=1024))
    update = params(n=50_000, fill=2.0)
    for r in (1, 2):
        await alice.send("coord", make(Kind.UPDATE, "alice", round=r, payload=update))
    first, second = await recv(coord), await recv(coord)
    assert isinstance(first.payload, Deferred) and payload_size(first) > update.nbytes
    assert store.gets == 0  # queued updates hold references, not bytes
    np.testing.assert_array_equal(payload_params(first, update.spec, max_bytes=1 << 20, what="update")["w"], 2.0)
    assert store.gets == 1
    # The store is not trusted: bytes that differ from what the sender signed for are refused.
    assert second.envelope.payload is not None and second.envelope.payload.ref is not None
    path = tmp_path / second.envelope.payload.ref[7:9] / second.envelope.payload.ref[9:]
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PayloadError, match="sha256 does not match"):
        payload_params(second, update.spec, max_bytes=1 << 20, what="update")
    with pytest.raises(PayloadError, match="exceeds the limit"):
        payload_params(second, update.spec, max_bytes=1024, what="update")
