"""Broker isolation for the peers of a decentralised federation (issue 15): each peer logs in as a
broker user of its own, made by ``fedhive peers add --broker-user rabbitmqctl`` (which also
declares the federation's exchanges). A peer declares and binds its own queues and publishes as
itself; it cannot read another peer's messages, speak as another peer, or delete the exchanges.

Against the shared RabbitMQ, in a vhost of the test's own (``BrokerSandbox``), with two peers'
real transports (``Role.PEER``) set up by their least-privilege users: that they start at all is
the positive control of what a peer may do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import BrokerSandbox, attempt, need_rabbitmqctl, refused
from typer.testing import CliRunner

from fedhive.cli import peers_cmd
from fedhive.core.envelope import Kind, make
from fedhive.runtime.peer_rounds import peer_codec
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Names, Role, broadcast_binding, broadcast_key, peer_id, up_binding, up_key
from fedhive.transports.broker_users import peer_sender_check

pytestmark = pytest.mark.amqp
KEY = bytes.fromhex("5e" * 32)
TOPIC = "peers"


@dataclass(frozen=True)
class Peer:
    login: str
    url: str


def provision_peers(sandbox: BrokerSandbox, root: Path, count: int) -> list[Peer]:
    out = root / "peers.jsonl"
    args = ["add", "peer", "--count", str(count), "--broker-user", "rabbitmqctl"]
    args += ["--namespace", sandbox.namespace, "--vhost", sandbox.vhost, "--out-file", str(out)]
    result = CliRunner().invoke(peers_cmd.app, args)
    made = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    sandbox.users.update(m["broker_user"] for m in made)
    assert result.exit_code == 0, result.output
    return [Peer(m["broker_user"], sandbox.url(m["broker_user"], m["broker_password"])) for m in made]


@pytest.fixture(scope="module")
def sandbox_peers(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerSandbox, list[Peer]]]:
    need_rabbitmqctl()
    sandbox = BrokerSandbox()
    try:
        sandbox.create()
        yield sandbox, provision_peers(sandbox, tmp_path_factory.mktemp("peers"), 2)
    finally:
        sandbox.destroy()


@dataclass
class Federation:
    names: Names
    alice: Peer
    bob: Peer
    alice_node: AmqpTransport
    bob_node: AmqpTransport


def peer_transport(sandbox: BrokerSandbox, peer: Peer) -> AmqpTransport:
    return AmqpTransport(
        peer.url,
        peer_id(peer.login),
        peer_codec(KEY),
        namespace=sandbox.namespace,
        role=Role.PEER,
        ephemeral=True,
        sender_check=peer_sender_check,
        topology_wait_s=20,
    )


@pytest.fixture
async def federation(sandbox_peers: tuple[BrokerSandbox, list[Peer]]) -> AsyncIterator[Federation]:
    sandbox, (alice, bob) = sandbox_peers
    async with peer_transport(sandbox, alice) as a, peer_transport(sandbox, bob) as b:
        await a.subscribe(TOPIC)
        await b.subscribe(TOPIC)
        yield Federation(Names(sandbox.namespace), alice, bob, a, b)


async def publish(channel: AbstractChannel, exchange: str, key: str, user: str, body: bytes = b"x") -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(body, user_id=user), key)


async def test_a_peer_cannot_read_another_peers_messages(federation: Federation) -> None:
    f = federation
    alice, bob_id = f.alice, f.bob_node.node_id

    async def ignore(message: AbstractIncomingMessage) -> None:
        del message

    async def consume(channel: AbstractChannel, queue: str) -> None:
        q = await channel.declare_queue(queue, passive=True)
        await q.consume(ignore)

    async def rebind(channel: AbstractChannel, exchange: str, key: str) -> None:
        own = await channel.declare_queue(f.names.node_queue(f.alice_node.node_id), passive=True)
        await own.bind(exchange, routing_key=key)

    assert await attempt(alice, lambda ch: rebind(ch, f.names.up_exchange, up_binding(f.alice_node.node_id))) is None
    await refused(alice, lambda ch: consume(ch, f.names.node_queue(bob_id)))
    await refused(alice, lambda ch: rebind(ch, f.names.up_exchange, up_binding(bob_id)))
    await refused(alice, lambda ch: rebind(ch, f.names.up_exchange, "#"))
    await refused(alice, lambda ch: rebind(ch, f.names.broadcast_exchange, "#"))
    await refused(alice, lambda ch: rebind(ch, f.names.direct_exchange, bob_id))
    # A queue of bob's name (or any name but its own) cannot be declared to squat it.
    await refused(alice, lambda ch: ch.declare_queue(f.names.node_queue(peer_id(f.bob.login)), durable=True))
    await refused(alice, lambda ch: ch.declare_queue(exclusive=True))


async def test_a_peer_publishes_only_as_itself(federation: Federation) -> None:
    f = federation
    alice, me, bob_id = f.alice, f.alice_node.node_id, f.bob_node.node_id
    up, cast = f.names.up_exchange, f.names.broadcast_exchange
    assert await attempt(alice, lambda ch: publish(ch, cast, broadcast_key(TOPIC, me), alice.login)) is None
    await refused(alice, lambda ch: publish(ch, cast, broadcast_key(TOPIC, bob_id), alice.login))
    await refused(alice, lambda ch: publish(ch, up, up_key(me, bob_id), alice.login))
    await refused(alice, lambda ch: publish(ch, f.names.direct_exchange, bob_id, alice.login))
    await refused(alice, lambda ch: publish(ch, "", f.names.node_queue(bob_id), alice.login))
    answer = await attempt(alice, lambda ch: publish(ch, up, up_key(bob_id, me), f.bob.login))
    assert isinstance(answer, ChannelPreconditionFailed), answer  # user_id of another login: 406


async def test_a_peer_cannot_delete_or_redeclare_the_exchanges_or_another_peers_queue(federation: Federation) -> None:
    f = federation
    for exchange in (f.names.up_exchange, f.names.broadcast_exchange):
        await refused(f.alice, lambda ch, exchange=exchange: ch.exchange_delete(exchange))
        await refused(f.alice, lambda ch, exchange=exchange: ch.declare_exchange(exchange, "fanout", durable=True))
    await refused(f.alice, lambda ch: ch.queue_delete(f.names.node_queue(f.bob_node.node_id)))


async def test_a_peer_holding_the_shared_key_cannot_speak_as_another(federation: Federation) -> None:
    """Alice signs as one of bob's peer ids (every peer holds the federation's key) and publishes
    under her own routing key, which the broker lets through: bob drops it, then takes her own."""
    f = federation
    me = f.alice_node.node_id
    codec = peer_codec(KEY)
    forged = await codec.encode(TOPIC, make(Kind.ANNOUNCE, peer_id(f.bob.login), body={"type": "bye"}))
    honest = await codec.encode(TOPIC, make(Kind.ANNOUNCE, me, body={"type": "bye"}))
    cast = f.names.broadcast_exchange
    assert await attempt(f.alice, lambda ch: publish(ch, cast, broadcast_key(TOPIC, me), f.alice.login, forged)) is None
    assert await attempt(f.alice, lambda ch: publish(ch, cast, broadcast_key(TOPIC, me), f.alice.login, honest)) is None
    async with asyncio.timeout(30):
        first = await f.bob_node.recv()
    assert first.sender == me
    assert f.bob_node.rejected == 1


async def test_peers_reach_each_other_directly_and_by_broadcast(federation: Federation) -> None:
    f = federation
    await f.alice_node.send(f.bob_node.node_id, make(Kind.ANNOUNCE, f.alice_node.node_id, body={"type": "bye"}))
    await f.bob_node.publish(TOPIC, make(Kind.ANNOUNCE, f.bob_node.node_id, body={"type": "bye"}))
    async with asyncio.timeout(30):
        assert (await f.bob_node.recv()).sender == f.alice_node.node_id
        assert (await f.alice_node.recv()).sender == f.bob_node.node_id
    assert broadcast_binding(TOPIC) == f"{TOPIC}.*"
