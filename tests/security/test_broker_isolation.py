"""Broker isolation (issue 15, part 1): a client holding its own broker user can do nothing on the
broker but publish to the coordinator as itself and consume its own queue.

Each attack of the issue, tried with the broker user ``fedhive clients add --broker-user
rabbitmqctl`` made, against the shared RabbitMQ in a vhost of the test's own (``BrokerSandbox``),
with the coordinator's real transport holding the namespace's exchanges and queues. Each attack
has a positive control beside it (what the client may do works), so a test cannot pass because
the client could do nothing at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import BrokerSandbox, attempt, bind_own_queue, need_rabbitmqctl, provision_clients, refused

from fedhive.core.envelope import Kind, make
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.networked import client_codec, coordinator_codec
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Names, up_key
from fedhive.transports.broker_users import SenderLogins

pytestmark = pytest.mark.amqp


@dataclass(frozen=True)
class Site:
    client_id: str
    key: bytes
    url: str


@dataclass(frozen=True)
class Federation:
    sandbox: BrokerSandbox
    store: CredentialStore
    alice: Site
    bob: Site

    @property
    def names(self) -> Names:
        return Names(self.sandbox.namespace)


@pytest.fixture(scope="module")
def federation(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Two clients made by ``fedhive clients add --broker-user rabbitmqctl`` in a fresh vhost."""
    need_rabbitmqctl()
    sandbox = BrokerSandbox()
    root = tmp_path_factory.mktemp("federation")
    try:
        sandbox.create()
        sites = provision_clients(sandbox, root / "clients.json", 2)
        alice, bob = (
            Site(s["client_id"], parse_secret(s["secret"]), sandbox.url(s["broker_user"], s["broker_password"]))
            for s in sites
        )
        yield Federation(sandbox, CredentialStore(root / "clients.json"), alice, bob)
    finally:
        sandbox.destroy()


@pytest.fixture
async def coordinator(federation: Federation) -> AsyncIterator[AmqpTransport]:
    """The coordinator's transport: it declares the exchanges, its queue and the clients' queues."""
    transport = AmqpTransport(
        federation.sandbox.admin_url,
        COORDINATOR_ID,
        coordinator_codec(federation.store),
        namespace=federation.sandbox.namespace,
        downstream=lambda: federation.store.broker_users(),
        sender_check=SenderLogins(federation.store.broker_users),
        keep_interval_s=0.5,
    )
    async with transport:
        yield transport


async def test_a_client_cannot_listen_in_on_the_coordinator_or_other_clients(
    federation: Federation, coordinator: AmqpTransport
) -> None:
    names, alice, bob = federation.names, federation.alice, federation.bob
    own = names.node_queue(alice.client_id)
    # A queue of its own to bind: not even a server-named, exclusive one.
    await refused(alice, lambda ch: ch.declare_queue(exclusive=True))
    # Its own queue, bound to what the coordinator or bob receive.
    await refused(alice, lambda ch: bind_own_queue(ch, own, names.up_exchange, f"{COORDINATOR_ID}.*"))
    await refused(alice, lambda ch: bind_own_queue(ch, own, names.up_exchange, "#"))
    await refused(alice, lambda ch: bind_own_queue(ch, own, names.direct_exchange, bob.client_id))
    await refused(alice, lambda ch: bind_own_queue(ch, own, names.direct_exchange, COORDINATOR_ID))


async def test_a_client_consumes_its_own_queue_and_no_other(federation: Federation, coordinator: AmqpTransport) -> None:
    names, alice, bob = federation.names, federation.alice, federation.bob

    async def ignore(message: AbstractIncomingMessage) -> None:
        del message

    async def consume(channel: AbstractChannel, queue: str) -> None:
        q = await channel.declare_queue(queue, passive=True)
        await q.consume(ignore)

    assert await attempt(alice, lambda ch: consume(ch, names.node_queue(alice.client_id))) is None
    await refused(alice, lambda ch: consume(ch, names.node_queue(COORDINATOR_ID)))
    await refused(alice, lambda ch: consume(ch, names.node_queue(bob.client_id)))
    await refused(alice, lambda ch: _get(ch, names.node_queue(COORDINATOR_ID)))  # basic.get


async def _get(channel: AbstractChannel, queue: str) -> None:
    q = await channel.declare_queue(queue, passive=True)
    await q.get(no_ack=True, fail=False)


async def test_a_client_cannot_delete_purge_or_squat_broker_objects(
    federation: Federation, coordinator: AmqpTransport
) -> None:
    names, alice = federation.names, federation.alice
    await refused(alice, lambda ch: ch.exchange_delete(names.up_exchange))
    await refused(alice, lambda ch: ch.exchange_delete(names.direct_exchange))
    await refused(alice, lambda ch: ch.queue_delete(names.node_queue(COORDINATOR_ID)))
    await refused(alice, lambda ch: _purge(ch, names.node_queue(COORDINATOR_ID)))
    # Squatting: the namespace's exchange redeclared as another type, or a namespace declared first.
    await refused(alice, lambda ch: ch.declare_exchange(names.direct_exchange, "fanout", durable=True))
    later = Names(f"{federation.sandbox.namespace}-next")
    await refused(alice, lambda ch: ch.declare_exchange(later.direct_exchange, "fanout", durable=True))
    await refused(alice, lambda ch: ch.declare_queue(later.node_queue(COORDINATOR_ID), durable=True))


async def _purge(channel: AbstractChannel, queue: str) -> None:
    q = await channel.declare_queue(queue, passive=True)
    await q.purge()


async def test_a_client_publishes_to_the_coordinator_only_as_itself(
    federation: Federation, coordinator: AmqpTransport
) -> None:
    names, alice, bob = federation.names, federation.alice, federation.bob

    async def publish(channel: AbstractChannel, exchange: str, key: str, user: str) -> None:
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"x", user_id=user), key, mandatory=True)

    own_key = up_key(COORDINATOR_ID, alice.client_id)
    assert await attempt(alice, lambda ch: publish(ch, names.up_exchange, own_key, alice.client_id)) is None
    # Under bob's routing key, straight to a queue, or through the coordinator's own exchange.
    await refused(
        alice, lambda ch: publish(ch, names.up_exchange, up_key(COORDINATOR_ID, bob.client_id), alice.client_id)
    )
    await refused(alice, lambda ch: publish(ch, names.direct_exchange, COORDINATOR_ID, alice.client_id))
    await refused(alice, lambda ch: publish(ch, names.direct_exchange, bob.client_id, alice.client_id))
    await refused(alice, lambda ch: publish(ch, "", names.node_queue(COORDINATOR_ID), alice.client_id))
    # As bob's broker user: RabbitMQ checks user_id against the connection's login.
    answer = await attempt(alice, lambda ch: publish(ch, names.up_exchange, own_key, bob.client_id))
    assert isinstance(answer, ChannelPreconditionFailed), answer


async def test_the_coordinator_refuses_a_sender_signed_under_another_login(
    federation: Federation, coordinator: AmqpTransport
) -> None:
    """Alice holds bob's secret (stolen) and signs as bob: the signature checks, the broker user
    does not. Her own message, published the same way, is taken."""
    names, alice, bob = federation.names, federation.alice, federation.bob
    forged = await client_codec(bob.client_id, bob.key).encode(COORDINATOR_ID, make(Kind.HEARTBEAT, bob.client_id))
    honest = await client_codec(alice.client_id, alice.key).encode(
        COORDINATOR_ID, make(Kind.HEARTBEAT, alice.client_id)
    )

    async def publish(channel: AbstractChannel, frame: bytes) -> None:
        up = await channel.get_exchange(names.up_exchange, ensure=False)
        key = up_key(COORDINATOR_ID, alice.client_id)
        await up.publish(aio_pika.Message(frame, user_id=alice.client_id), key, mandatory=True)

    assert await attempt(alice, lambda ch: publish(ch, forged)) is None  # the broker routes it...
    assert await attempt(alice, lambda ch: publish(ch, honest)) is None
    async with asyncio.timeout(30):
        first = await coordinator.recv()  # ...and the coordinator drops it: alice's is the first
    assert first.sender == alice.client_id
    assert coordinator.rejected == 1


def test_sender_logins_tie_each_provisioned_client_to_its_broker_user() -> None:
    logins = {"alice-1": "alice-1", "bob-2": "bob-2"}
    check = SenderLogins(lambda: logins)
    assert check("alice-1", "alice-1") is None
    assert check("alice-1", "bob-2") == "published by broker user 'bob-2', but alice-1's broker user is 'alice-1'"
    assert check("alice-1", None) is not None  # no user_id at all
    assert check("dev-3", "bob-2") == "broker user 'bob-2' belongs to bob-2, not to dev-3"
    assert check("dev-3", "guest") is None  # a client without a broker user: its signature is all there is
    assert set(check.provisioned()) == {"alice-1", "bob-2"}
