"""Client hosts as one broker identity (issues 15 and 18): a host made by ``fedhive clients add gw
--role host --broker-user rabbitmqctl`` and its clients by ``fedhive clients add v --hosted-by HOST``
share the host's one queue and broker user. That user may publish up only as the host or as one
of its own clients, consume only the host's queue, and configure nothing; the coordinator takes a
hosted client's message only from its host's login.

Against the shared RabbitMQ, in a vhost of the test's own (``BrokerSandbox``), with the
coordinator's real transport (or a whole session) holding the namespace. Each refusal has a
positive control beside it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import BrokerSandbox, attempt, bind_own_queue, consume, need_rabbitmqctl, rabbitmqctl, refused
from typer.testing import CliRunner

from fedhive.app.loader import BUILTIN
from fedhive.cli import clients_cmd
from fedhive.cli.session_file import parse_session
from fedhive.cli.site_options import build_site
from fedhive.core.envelope import Kind, make
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.networked import (
    BrokerSettings,
    ClientSettings,
    client_codec,
    coordinator_codec,
    run_client_host,
    run_coordinator,
)
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Names, up_binding, up_key
from fedhive.transports.broker_users import SenderLogins

pytestmark = pytest.mark.amqp

CLIENTS_PER_HOST = 3


@dataclass(frozen=True)
class Node:
    node_id: str
    secret: str
    url: str

    @property
    def key(self) -> bytes:
        return parse_secret(self.secret)


@dataclass(frozen=True)
class Fleet:
    sandbox: BrokerSandbox
    store: CredentialStore
    hosts: list[Node]  # each with its own broker user
    clients: list[list[Node]]  # the clients of each host, whose url is their host's

    @property
    def names(self) -> Names:
        return Names(self.sandbox.namespace)


def add(sandbox: BrokerSandbox, store: Path, name: str, *args: str) -> list[dict[str, str]]:
    out = store.parent / f"{name}.jsonl"
    cli = ["add", name, *args, "--namespace", sandbox.namespace, "--vhost", sandbox.vhost]
    result = CliRunner().invoke(clients_cmd.app, [*cli, "--store", str(store), "--out-file", str(out)])
    made = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    sandbox.users.update(m["broker_user"] for m in made if "broker_user" in m)
    assert result.exit_code == 0, result.output
    return made


@pytest.fixture
def fleet(rabbitmq_url: str, tmp_path: Path) -> Iterator[Fleet]:
    need_rabbitmqctl()
    sandbox = BrokerSandbox()
    store = tmp_path / "clients.json"
    try:
        sandbox.create()
        made = add(sandbox, store, "gw", "--count", "2", "--role", "host", "--broker-user", "rabbitmqctl")
        hosts = [Node(m["client_id"], m["secret"], sandbox.url(m["broker_user"], m["broker_password"])) for m in made]
        clients: list[list[Node]] = []
        for host in hosts:
            ours = add(
                sandbox, store, f"v{len(clients)}", "--count", str(CLIENTS_PER_HOST), "--hosted-by", host.node_id
            )
            clients.append([Node(m["client_id"], m["secret"], host.url) for m in ours])
        yield Fleet(sandbox, CredentialStore(store), hosts, clients)
    finally:
        sandbox.destroy()


@pytest.fixture
async def coordinator(fleet: Fleet) -> AsyncIterator[AmqpTransport]:
    """The coordinator's transport: it declares the hosts' queues (and no hosted client's)."""
    store = fleet.store
    logins = SenderLogins(store.broker_users, store.combiners, store.hosts)
    transport = AmqpTransport(
        fleet.sandbox.admin_url,
        COORDINATOR_ID,
        coordinator_codec(store),
        namespace=fleet.sandbox.namespace,
        downstream=logins.provisioned,
        sender_check=logins,
        route_via=logins.host_of,
        keep_interval_s=0.5,
    )
    async with transport:
        yield transport


async def publish(channel: AbstractChannel, exchange: str, key: str, user: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"x", user_id=user), key, mandatory=True)


def login(url: str) -> str:
    return url.split("://", 1)[1].split(":", 1)[0]


async def test_a_host_publishes_only_as_itself_or_its_own_clients(fleet: Fleet, coordinator: AmqpTransport) -> None:
    (a, b), up = fleet.hosts, fleet.names.up_exchange
    a1, b1 = fleet.clients[0][0].node_id, fleet.clients[1][0].node_id
    user_a, user_b = login(a.url), login(b.url)
    for own in (a.node_id, a1):  # positive controls: as itself, and as one of its clients
        assert await attempt(a.url, lambda ch, own=own: publish(ch, up, up_key(COORDINATOR_ID, own), user_a)) is None
    for other in (b1, b.node_id, f"x-1:{b.node_id}"):  # host b's client, host b, any id naming b
        await refused(a.url, lambda ch, o=other: publish(ch, up, up_key(COORDINATOR_ID, o), user_a), other)
    await refused(a.url, lambda ch: publish(ch, fleet.names.direct_exchange, b1, user_a), "the direct exchange")
    answer = await attempt(a.url, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, a1), user_b))
    assert isinstance(answer, ChannelPreconditionFailed), answer  # user_id of another login: 406


async def test_a_host_reads_its_own_queue_and_cannot_bind_or_declare(fleet: Fleet, coordinator: AmqpTransport) -> None:
    (a, b), names = fleet.hosts, fleet.names
    own = names.node_queue(a.node_id)
    assert await attempt(a.url, lambda ch: consume(ch, own)) is None
    for other in (b.node_id, COORDINATOR_ID):
        await refused(a.url, lambda ch, o=other: consume(ch, names.node_queue(o)), f"consume {other}'s queue")
    b1 = fleet.clients[1][0].node_id
    await refused(a.url, lambda ch: bind_own_queue(ch, own, names.direct_exchange, b1), "bind b1's key")
    await refused(a.url, lambda ch: bind_own_queue(ch, own, names.direct_exchange, b.node_id), "bind b's key")
    await refused(a.url, lambda ch: bind_own_queue(ch, own, names.up_exchange, up_binding(COORDINATOR_ID)))
    await refused(a.url, lambda ch: ch.declare_queue(exclusive=True), "declare a queue")


async def test_the_coordinator_drops_a_hosts_message_for_a_client_not_its_own(
    fleet: Fleet, coordinator: AmqpTransport
) -> None:
    # Host a holds b1's secret (leaked) and publishes a message signed by b1 under a key it may
    # use (a1's): the signature holds, the broker lets it through, the coordinator drops it.
    (a, _), a1, b1 = fleet.hosts, fleet.clients[0][0], fleet.clients[1][0]
    forged = make(Kind.HEARTBEAT, b1.node_id, body={"status": "ONLINE"})
    honest = make(Kind.HEARTBEAT, a1.node_id, body={"status": "ONLINE"})
    codecs = {a1.node_id: client_codec(a1.node_id, a1.key), b1.node_id: client_codec(b1.node_id, b1.key)}
    sender = AmqpTransport(a.url, a.node_id, client_codec(a.node_id, a.key), namespace=fleet.sandbox.namespace,
                           declares=False, speaks_for=codecs)  # fmt: skip
    async with sender:
        frame = await codecs[b1.node_id].encode(COORDINATOR_ID, forged)
        exchange, _, _ = sender._route(COORDINATOR_ID, a1.node_id)  # a1's key: the broker allows it
        await sender._publish(exchange, up_key(COORDINATOR_ID, a1.node_id), frame, addressed=True)
        await sender.send(COORDINATOR_ID, honest)
    got = await asyncio.wait_for(coordinator.recv(), 30)
    while got.kind is not Kind.HEARTBEAT:
        got = await asyncio.wait_for(coordinator.recv(), 30)
    assert got.sender == a1.node_id  # the forged one, sent first, never came out
    assert coordinator.rejected == 1


async def test_a_session_of_two_hosts_under_their_own_users_completes(fleet: Fleet) -> None:
    namespace = fleet.sandbox.namespace
    total = sum(len(c) for c in fleet.clients)
    accepted: dict[int, set[str]] = {}

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: accepted.setdefault(e.round, set()).add(e.client_id))

    raw = {"rounds": 2, "min_clients": total, "model": "logreg-np", "lr": 0.1, "round_timeout_s": 60,
           "heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 15.0, "session_id": "hosted"}  # fmt: skip
    session = parse_session({**raw, "data": {"dataset": "digits"}}, Path(fleet.store.path).parent / "s.toml")
    ready = asyncio.Event()
    settings = ClientSettings(register_timeout_s=60, coordinator_timeout_s=60, heartbeat_interval_s=1.0)
    async with asyncio.timeout(150):
        admin = BrokerSettings(fleet.sandbox.admin_url, namespace)
        run = asyncio.create_task(run_coordinator(session, fleet.store, admin, observers=[watch], on_ready=ready.set))
        await ready.wait()
        runs = []
        for n, (host, ours) in enumerate(zip(fleet.hosts, fleet.clients, strict=True)):
            parts = [LocalData(dataset="digits", part=f"{n * 3 + i}/6") for i in (1, 2, 3)]
            sites = [
                (c.key, build_site(c.node_id, BUILTIN, None, data, persist_state=False))
                for c, data in zip(ours, parts, strict=True)
            ]
            link = BrokerSettings(host.url, namespace)  # the host's own login
            runs.append(asyncio.create_task(run_client_host((host.node_id, host.key), sites, link, settings)))
        result = await run
        assert await asyncio.gather(*runs) == [2, 2]
    assert result.rounds == 2
    everyone = {c.node_id for ours in fleet.clients for c in ours}
    assert accepted == {1: everyone, 2: everyone}
    # One queue per host, none per hosted client.
    queues = rabbitmqctl("list_queues", "-p", fleet.sandbox.vhost, "name", "--no-table-headers", "-q").split()
    node_queues = {q for q in queues if q.startswith(f"{namespace}.node.")}
    assert node_queues == {fleet.names.node_queue(n) for n in (COORDINATOR_ID, *(h.node_id for h in fleet.hosts))}
