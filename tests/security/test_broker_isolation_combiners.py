"""Broker isolation for combiners (issue 15): a combiner's broker user, made by ``fedhive clients
add --role combiner --broker-user rabbitmqctl``, may consume its own queue, publish up to the
coordinator as itself, and publish down to the clients the coordinator assigned to it; nothing else.

Against the shared RabbitMQ, in a vhost of the test's own (``BrokerSandbox``), with the
coordinator's real transport holding the namespace (it declares and binds the combiners' queues,
and routes each client to its combiner). Each refusal has a positive control beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import PublishError
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import BrokerSandbox, attempt, consume, need_rabbitmqctl, provision_clients, refused

from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import CredentialStore
from fedhive.runtime.networked import coordinator_codec
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Names, up_binding, up_key
from fedhive.transports.broker_users import SenderLogins

pytestmark = pytest.mark.amqp


@dataclass(frozen=True)
class Node:
    node_id: str
    url: str


@dataclass(frozen=True)
class Hierarchy:
    sandbox: BrokerSandbox
    store: CredentialStore
    comb1: Node
    comb2: Node
    alice: Node  # assigned to comb1
    bob: Node  # assigned to comb2

    @property
    def names(self) -> Names:
        return Names(self.sandbox.namespace)


@pytest.fixture(scope="module")
def hierarchy(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hierarchy]:
    need_rabbitmqctl()
    sandbox = BrokerSandbox()
    root = tmp_path_factory.mktemp("hierarchy")
    store = root / "clients.json"
    try:
        sandbox.create()
        made = provision_clients(sandbox, store, 2, role="combiner", name="comb")
        made += provision_clients(sandbox, store, 2)
        comb1, comb2, alice, bob = (
            Node(m["client_id"], sandbox.url(m["broker_user"], m["broker_password"])) for m in made
        )
        yield Hierarchy(sandbox, CredentialStore(store), comb1, comb2, alice, bob)
    finally:
        sandbox.destroy()


@pytest.fixture
async def coordinator(hierarchy: Hierarchy) -> AsyncIterator[AmqpTransport]:
    """The coordinator's transport, with alice routed to comb1 and bob to comb2."""
    store = hierarchy.store
    transport = AmqpTransport(
        hierarchy.sandbox.admin_url,
        COORDINATOR_ID,
        coordinator_codec(store),
        namespace=hierarchy.sandbox.namespace,
        downstream=store.broker_users().keys,
        relays=store.combiners,
        sender_check=SenderLogins(store.broker_users, store.combiners),
        keep_interval_s=0.5,
    )
    async with transport:
        await transport.route_down(hierarchy.alice.node_id, hierarchy.comb1.node_id)
        await transport.route_down(hierarchy.bob.node_id, hierarchy.comb2.node_id)
        yield transport


async def publish(channel: AbstractChannel, exchange: str, key: str, user: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"x", user_id=user), key, mandatory=True)


async def test_a_combiner_reads_its_own_queue_and_no_other(hierarchy: Hierarchy, coordinator: AmqpTransport) -> None:
    names, comb1 = hierarchy.names, hierarchy.comb1
    assert await attempt(comb1, lambda ch: consume(ch, names.node_queue(comb1.node_id))) is None
    for other in (COORDINATOR_ID, hierarchy.comb2.node_id, hierarchy.alice.node_id, hierarchy.bob.node_id):
        await refused(comb1, lambda ch, other=other: consume(ch, names.node_queue(other)))


async def bind_own_queue(channel: AbstractChannel, queue: str, exchange: str, key: str) -> None:
    own = await channel.declare_queue(queue, passive=True)
    await own.bind(exchange, routing_key=key)


async def test_a_combiner_cannot_bind_to_listen_in(hierarchy: Hierarchy, coordinator: AmqpTransport) -> None:
    names, comb1, comb2 = hierarchy.names, hierarchy.comb1, hierarchy.comb2
    own = names.node_queue(comb1.node_id)
    await refused(comb1, lambda ch: ch.declare_queue(exclusive=True))
    await refused(comb1, lambda ch: bind_own_queue(ch, own, names.up_exchange, up_binding(COORDINATOR_ID)))
    await refused(comb1, lambda ch: bind_own_queue(ch, own, names.up_exchange, up_binding(comb2.node_id)))
    await refused(comb1, lambda ch: bind_own_queue(ch, own, names.down_exchange, "#"))
    await refused(comb1, lambda ch: bind_own_queue(ch, own, names.direct_exchange, comb2.node_id))


async def test_a_combiner_publishes_up_only_as_itself_to_the_coordinator(
    hierarchy: Hierarchy, coordinator: AmqpTransport
) -> None:
    names, comb1, comb2 = hierarchy.names, hierarchy.comb1, hierarchy.comb2
    up = names.up_exchange
    assert (
        await attempt(comb1, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, comb1.node_id), comb1.node_id)) is None
    )
    await refused(comb1, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, comb2.node_id), comb1.node_id))
    await refused(comb1, lambda ch: publish(ch, up, up_key(comb2.node_id, comb1.node_id), comb1.node_id))
    await refused(comb1, lambda ch: publish(ch, names.direct_exchange, COORDINATOR_ID, comb1.node_id))
    await refused(comb1, lambda ch: publish(ch, "", names.node_queue(COORDINATOR_ID), comb1.node_id))
    answer = await attempt(comb1, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, comb1.node_id), comb2.node_id))
    assert isinstance(answer, ChannelPreconditionFailed), answer  # user_id of another login: 406


async def test_a_combiner_reaches_exactly_the_clients_assigned_to_it(
    hierarchy: Hierarchy, coordinator: AmqpTransport
) -> None:
    names, comb1, comb2 = hierarchy.names, hierarchy.comb1, hierarchy.comb2
    alice, bob, down = hierarchy.alice.node_id, hierarchy.bob.node_id, names.down_exchange
    assert await attempt(comb1, lambda ch: publish(ch, down, up_key(alice, comb1.node_id), comb1.node_id)) is None
    # Bob is comb2's: comb1's key reaches no queue, and comb2's key is not comb1's to use.
    answer = await attempt(comb1, lambda ch: publish(ch, down, up_key(bob, comb1.node_id), comb1.node_id))
    assert isinstance(answer, PublishError), answer
    await refused(comb1, lambda ch: publish(ch, down, up_key(bob, comb2.node_id), comb1.node_id))
    # Alice moves to comb2 (comb1 fell silent): comb1 reaches her no more, comb2 does.
    await coordinator.route_down(alice, comb2.node_id)
    answer = await attempt(comb1, lambda ch: publish(ch, down, up_key(alice, comb1.node_id), comb1.node_id))
    assert isinstance(answer, PublishError), answer
    assert await attempt(comb2, lambda ch: publish(ch, down, up_key(alice, comb2.node_id), comb2.node_id)) is None
    await coordinator.route_down(alice, comb1.node_id)


async def test_a_combiner_cannot_delete_or_squat_broker_objects(
    hierarchy: Hierarchy, coordinator: AmqpTransport
) -> None:
    names, comb1 = hierarchy.names, hierarchy.comb1
    for exchange in (names.up_exchange, names.down_exchange, names.direct_exchange, names.broadcast_exchange):
        await refused(comb1, lambda ch, exchange=exchange: ch.exchange_delete(exchange))
    await refused(comb1, lambda ch: ch.queue_delete(names.node_queue(comb1.node_id)))
    await refused(comb1, lambda ch: ch.queue_delete(names.node_queue(COORDINATOR_ID)))
    await refused(comb1, lambda ch: ch.declare_exchange(names.down_exchange, "fanout", durable=True))


async def test_a_client_cannot_send_down_to_another_client(hierarchy: Hierarchy, coordinator: AmqpTransport) -> None:
    """The down exchange is the combiners' alone: a client may not publish there, not even as itself."""
    names, alice, bob = hierarchy.names, hierarchy.alice, hierarchy.bob
    await refused(alice, lambda ch: publish(ch, names.down_exchange, up_key(bob.node_id, alice.node_id), alice.node_id))
    answer = await attempt(
        alice, lambda ch: publish(ch, names.up_exchange, up_key(bob.node_id, alice.node_id), alice.node_id)
    )
    assert isinstance(answer, PublishError), answer  # a client's queue is never bound to the up exchange
