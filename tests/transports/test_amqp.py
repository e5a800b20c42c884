"""AmqpTransport against a real RabbitMQ: signed frames, topics, claim checks, a broker restart."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import numpy as np
import pytest

from fedhive.core import codec as params_codec
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier
from fedhive.errors import ConfigError, TransportError
from fedhive.storage.artifacts import ArtifactStore, LocalArtifactStore
from fedhive.transports.amqp import AmqpTransport, delete_namespace
from fedhive.transports.base import TransportClosed
from fedhive.transports.wire_codec import WireCodec, claims_store
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.amqp

SECRETS = {"coord": b"c" * 32, "alice": b"a" * 32, "bob": b"b" * 32}


def codec_for(
    node_id: str, *, key: bytes | None = None, artifacts: ArtifactStore | None = None, claim_check_bytes: int = 1 << 23
) -> WireCodec:
    """Each node signs with its own secret; receivers look the sender's secret up."""
    secret = key or SECRETS[node_id]
    return WireCodec(lambda _to: secret, Verifier(SECRETS.get), artifacts, claim_check_bytes=claim_check_bytes)


class Broker:
    """Transports in one throw-away namespace; teardown deletes every durable queue it created."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"test-{uuid4().hex[:8]}"
        self.transports: list[AmqpTransport] = []
        self.node_ids: set[str] = set()

    async def node(self, node_id: str, codec: WireCodec | None = None, **kw: object) -> AmqpTransport:
        t = AmqpTransport(self.url, node_id, codec or codec_for(node_id), namespace=self.namespace, **kw)  # type: ignore[arg-type]
        self.transports.append(t)
        self.node_ids.add(node_id)
        await t.start()
        return t

    async def teardown(self) -> None:
        for t in self.transports:
            await t.close()
        await delete_namespace(self.url, self.namespace, self.node_ids)


@pytest.fixture
async def broker(rabbitmq_url: str) -> AsyncIterator[Broker]:
    b = Broker(rabbitmq_url)
    yield b
    await b.teardown()


def params(n: int = 4, fill: float = 1.5) -> Params:
    return Params({"w": np.full(n, fill, np.float32), "b": np.arange(3, dtype=np.float32)})


def assert_same_params(payload: object, expected: Params) -> None:
    assert isinstance(payload, bytes | memoryview)
    got = params_codec.decode(payload, expected=expected.spec, max_bytes=1 << 30)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


async def recv(t: AmqpTransport, within_s: float = 10.0) -> Message:
    async with asyncio.timeout(within_s):
        return await t.recv()


async def test_send_and_recv_params_both_ways(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord, alice = await broker.node("coord"), await broker.node("alice")
        await coord.send("alice", make(Kind.TRAIN, "coord", session_id="s1", round=1, payload=params()))
        got = await recv(alice)
        assert (got.kind, got.sender, got.envelope.session_id, got.envelope.round) == (Kind.TRAIN, "coord", "s1", 1)
        assert_same_params(got.payload, params())

        await alice.send("coord", make(Kind.UPDATE, "alice", round=1, body={"num_examples": 7}, payload=params(fill=2)))
        back = await recv(coord)
        assert (back.kind, back.sender, back.envelope.body) == (Kind.UPDATE, "alice", {"num_examples": 7})
        assert_same_params(back.payload, params(fill=2))


async def test_messages_arrive_in_the_order_they_were_sent(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord, alice = await broker.node("coord"), await broker.node("alice")
        big = params(n=300_000)  # > 1 MiB: decoded in a worker thread, must not overtake or be overtaken
        for i in range(6):
            await coord.send("alice", make(Kind.TRAIN, "coord", round=i, payload=big if i % 2 else None))
        assert [(await recv(alice)).envelope.round for _ in range(6)] == list(range(6))


async def test_publish_reaches_every_subscriber_including_the_sender(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord, alice, bob = await broker.node("coord"), await broker.node("alice"), await broker.node("bob")
        for t in (coord, alice, bob):
            await t.subscribe("peers")
        await alice.subscribe("peers")  # subscribing twice changes nothing
        await bob.subscribe("other")
        await coord.publish("nobody-listens", make(Kind.STOP, "coord"))  # a broadcast to no one is fine
        await coord.publish("peers", make(Kind.ANNOUNCE, "coord", body={"n": 1}))
        for t in (coord, alice, bob):
            got = await recv(t)
            assert (got.kind, got.envelope.body) == (Kind.ANNOUNCE, {"n": 1})
        # one copy each (a second would come before this), and the node queue works alongside the topic one
        await coord.send("alice", make(Kind.STOP, "coord"))
        assert (await recv(alice)).kind == Kind.STOP


async def test_send_to_a_node_the_broker_never_saw_raises(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord = await broker.node("coord")
        with pytest.raises(TransportError, match="no queue for node 'ghost'"):
            await coord.send("ghost", make(Kind.TRAIN, "coord"))
        assert coord.unroutable == 1


async def test_messages_for_an_offline_node_wait_in_its_queue(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord, alice = await broker.node("coord"), await broker.node("alice")
        await alice.close()
        await coord.send("alice", make(Kind.TRAIN, "coord", round=3))
        alice_again = await broker.node("alice")
        assert (await recv(alice_again)).envelope.round == 3


class FramingCodec(WireCodec):
    """Sends a fixed frame (garbage) or the first frame it ever encoded (a replay attack)."""

    frame: bytes | None = None

    async def encode(self, to: str, message: Message) -> bytes:
        if self.frame is None:
            self.frame = await super().encode(to, message)
        return self.frame


async def test_forged_and_malformed_messages_are_rejected_and_the_next_arrives(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncio.timeout(30):
        coord, alice = await broker.node("coord"), await broker.node("alice")
        mallory = await broker.node("mallory", codec_for("alice", key=b"not alice's secret"))
        garbage = FramingCodec(lambda _to: b"x", Verifier(SECRETS.get))
        garbage.frame = b"\x00\x00\x00\x05{not"
        vandal = await broker.node("vandal", garbage)
        with caplog.at_level(logging.WARNING, logger="fedhive.transport"):
            await mallory.send("coord", make(Kind.UPDATE, "alice", payload=params()))
            await vandal.send("coord", make(Kind.UPDATE, "vandal"))
            await alice.send("coord", make(Kind.UPDATE, "alice", round=5))
            got = await recv(coord)
        assert (got.sender, got.envelope.round) == ("alice", 5)
        assert coord.rejected == 2
        warnings = [r.getMessage() for r in caplog.records if r.name == "fedhive.transport"]
        assert len(warnings) == 2
        assert "forged" in warnings[0] and "bad signature" in warnings[0]
        assert "coord: rejected message" in warnings[1]


async def test_replayed_frame_is_rejected(broker: Broker) -> None:
    async with asyncio.timeout(30):
        coord = await broker.node("coord")
        alice = await broker.node("alice", FramingCodec(lambda _to: SECRETS["alice"], Verifier(SECRETS.get)))
        bob = await broker.node("bob")
        await alice.send("coord", make(Kind.UPDATE, "alice", round=1))
        await alice.send("coord", make(Kind.UPDATE, "alice", round=2))  # sends the round-1 frame again
        await bob.send("coord", make(Kind.UPDATE, "bob", round=2))
        assert [(m.sender, m.envelope.round) for m in [await recv(coord), await recv(coord)]] == [
            ("alice", 1),
            ("bob", 2),
        ]
        assert coord.rejected == 1


async def test_large_payload_travels_by_reference(broker: Broker, tmp_path: Path) -> None:
    async with asyncio.timeout(30):
        store = LocalArtifactStore(tmp_path)
        big = params(n=50_000, fill=0.25)  # 200 KB, over the 1 KiB threshold below
        coord = await broker.node("coord", codec_for("coord", artifacts=store, claim_check_bytes=1024))
        alice = await broker.node("alice", codec_for("alice", artifacts=store, claim_check_bytes=1024))
        await coord.send("alice", make(Kind.TRAIN, "coord", payload=big))
        got = await recv(alice)
        desc = got.envelope.payload
        # in the namespace's claims area, apart from models and data sets
        assert desc is not None and desc.ref is not None and not store.exists(desc.ref)
        assert claims_store(store, broker.namespace).exists(desc.ref)
        assert_same_params(got.payload, big)


async def test_close_makes_recv_raise_and_is_idempotent(broker: Broker) -> None:
    async with asyncio.timeout(30):
        alice = await broker.node("alice")
        waiting = asyncio.create_task(alice.recv())
        await asyncio.sleep(0)  # let it block on the empty inbox
        await alice.close()
        with pytest.raises(TransportClosed):
            await waiting
        await alice.close()
        with pytest.raises(TransportClosed):
            await alice.recv()
        with pytest.raises(TransportClosed):
            await alice.send("coord", make(Kind.DONE, "alice"))
        assert [m async for m in alice] == []


@pytest.mark.slow
async def test_messages_flow_again_after_a_broker_restart(rabbitmq_url: str) -> None:
    # The outage is a proxy of ours cut (every connection reset, new ones refused), not the
    # machine's shared broker stopped.
    address = urlsplit(rabbitmq_url)
    proxy = TcpProxy(address.hostname or "127.0.0.1", address.port or 5672).start()
    broker = Broker(proxy.url_for(rabbitmq_url) + ("&" if "?" in rabbitmq_url else "?") + "reconnect_interval=1")
    try:
        async with asyncio.timeout(90):
            coord = await broker.node("coord", publish_timeout_s=45)
            alice = await broker.node("alice", publish_timeout_s=45)
            impatient = await broker.node("bob", publish_timeout_s=1)
            await alice.subscribe("peers")
            await coord.send("alice", make(Kind.TRAIN, "coord", round=1, payload=params()))
            assert (await recv(alice)).envelope.round == 1

            proxy.cut()
            try:
                with pytest.raises(TransportError, match="within 1 s"):
                    await impatient.send("coord", make(Kind.HEARTBEAT, "bob"))
                pending = asyncio.create_task(coord.send("alice", make(Kind.TRAIN, "coord", round=2)))
                await asyncio.sleep(1)
                assert not pending.done()  # waits for the broker instead of failing
            finally:
                proxy.restore()
            await pending
            assert (await recv(alice, 45)).envelope.round == 2

            await alice.send("coord", make(Kind.UPDATE, "alice", round=2, payload=params(fill=3)))
            back = await recv(coord, 45)
            assert (back.sender, back.envelope.round) == ("alice", 2)
            assert_same_params(back.payload, params(fill=3))
            await coord.publish("peers", make(Kind.ANNOUNCE, "coord"))  # the topic queue was restored too
            assert (await recv(alice, 45)).kind == Kind.ANNOUNCE
    finally:
        await broker.teardown()
        proxy.close()


async def test_unreachable_broker_raises_transport_error_without_the_password() -> None:
    t = AmqpTransport("amqp://guest:s3cret@127.0.0.1:1/", "alice", codec_for("alice"), connect_timeout_s=5)
    with pytest.raises(TransportError, match="cannot connect") as info:
        async with asyncio.timeout(10):
            await t.start()
    assert "s3cret" not in str(info.value) and "guest:***@127.0.0.1:1" in str(info.value)


async def test_amqps_builds_a_tls_context_from_the_ca_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(self_signed_ca_pem())
    seen: dict[str, object] = {}

    async def fake_connect_robust(url: str, **kwargs: object) -> object:
        seen.update(kwargs, url=url)
        raise ConnectionRefusedError("no TLS broker in tests")

    monkeypatch.setattr("fedhive.transports.amqp.aio_pika.connect_robust", fake_connect_robust)
    t = AmqpTransport("amqps://u:p@broker.example:5671/", "alice", codec_for("alice"), ca_file=str(ca))
    with pytest.raises(TransportError, match="no TLS broker"):
        await t.start()
    context = seen["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "fedhive test CA"),),)]


def test_tls_misconfiguration_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="use amqps://"):
        AmqpTransport("amqp://localhost/", "alice", codec_for("alice"), ca_file="ca.pem")
    with pytest.raises(ConfigError, match="cannot load the CA file"):
        AmqpTransport("amqps://localhost/", "alice", codec_for("alice"), ca_file=str(tmp_path / "missing.pem"))


def self_signed_ca_pem() -> str:
    x509 = pytest.importorskip("cryptography.x509")
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedhive test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
