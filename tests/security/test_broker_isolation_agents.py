"""Broker isolation for the site agents of ``fedhive serve`` (issue 15): each site created with
``fedhive admin site create --broker-user rabbitmqctl`` logs in as a broker user of its own, which
may configure nothing but its own peers' queues.

- A running ``fedhive serve`` and three ``fedhive agent`` processes, each under its site's user,
  in a vhost of the test's own (``BrokerSandbox``): a star, a hierarchical and a decentralised
  session end COMPLETED, the last with every peer on the same model. That the agents take part
  at all is the positive control of the rights ``BrokerGrant.site`` gives.
- One site's user, next to another site's agent peer (made by ``Agent``'s own peer link), cannot
  read the other's peer or site queue, publish as the other's peer or site, or delete the
  broadcast exchange; a message it signs as the other's peer with the session's key is dropped.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from broker_sandbox import BrokerSandbox, need_rabbitmqctl
from test_broker_isolation_peers import Attack, Peer, publish
from typer.testing import CliRunner

from fedhive.cli import admin_cmd
from fedhive.core.envelope import Kind, make
from fedhive.core.signing import Verifier
from fedhive.runtime.agent import Agent, AgentSites
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.peer_rounds import new_peer_id, peer_codec
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Names, broadcast_key, up_binding, up_key
from fedhive.transports.broker_users import SenderLogins
from fedhive.transports.wire_codec import WireCodec

sys.path.insert(0, str(Path(__file__).parent.parent / "service"))
from platform_user_app import NAME, write_app  # the platform tests' helpers
from serve_process import Server

from processes import Proc
from service.test_platform_flow import sign_up_and_in, wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.slow]
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
ROUNDS = 3
KEY = bytes.fromhex("7a" * 32)  # a decentralised session's federation key


@pytest.fixture
def sandbox(rabbitmq_url: str) -> Iterator[BrokerSandbox]:
    need_rabbitmqctl()
    box = BrokerSandbox()
    try:
        box.create()
        yield box
    finally:
        box.destroy()


def create_sites(sandbox: BrokerSandbox, home: Path, count: int) -> list[dict[str, str]]:
    """``fedhive admin site create ward --count N --broker-user rabbitmqctl``: ids, secrets, logins."""
    out = home.parent / "sites.jsonl"
    args = ["site", "create", "ward", "--count", str(count), "--out-file", str(out), "--home", str(home)]
    args += ["--broker-user", "rabbitmqctl", "--namespace", sandbox.namespace, "--vhost", sandbox.vhost]
    result = CliRunner().invoke(admin_cmd.app, args)
    sites = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    sandbox.users.update(s["broker_user"] for s in sites)  # deleted with the sandbox
    assert result.exit_code == 0, result.output
    assert [s["broker_user"] for s in sites] == [s["client_id"] for s in sites]
    return sorted(sites, key=lambda s: s["client_id"])


def site_url(sandbox: BrokerSandbox, site: dict[str, str]) -> str:
    return sandbox.url(site["broker_user"], site["broker_password"])


def agent_args(sandbox: BrokerSandbox, site: dict[str, str], part: int, folder: Path, tmp_path: Path) -> list[str]:
    state = tmp_path / "state" / site["client_id"]
    args = ["agent", "--id", site["client_id"], "--namespace", sandbox.namespace, "--app", str(folder)]
    args += ["--node", f"partition_id={part}", "--node", "num_partitions=3"]
    return [*FEDHIVE, *args, "--state-dir", str(state), "--heartbeat-interval", "0.5"]


def agent_env(sandbox: BrokerSandbox, site: dict[str, str]) -> dict[str, str]:
    """The site's own broker login and its secret, in the environment (never on a command line)."""
    return {"FEDHIVE_BROKER": site_url(sandbox, site), "FEDHIVE_CLIENT_SECRET": site["secret"]}


async def test_sessions_of_every_topology_complete_with_each_agent_under_its_own_broker_user(
    sandbox: BrokerSandbox, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    sites = create_sites(sandbox, home, 3)
    site_ids = [s["client_id"] for s in sites]
    folder = write_app(tmp_path / "apps")
    server = Server(
        home,
        {"broker_url": sandbox.admin_url, "namespace": sandbox.namespace},
        local_clients=0,
        extra=["--app", str(folder)],
    )
    agents = [
        Proc(s["client_id"], agent_args(sandbox, s, i, folder, tmp_path), env=agent_env(sandbox, s))
        for i, s in enumerate(sites)
    ]
    try:
        for agent in agents:  # its queue is the server's to make: it waits for it
            agent.wait_for("connected", timeout=120)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            auth = await sign_up_and_in(http)

            async def all_online() -> bool:
                peers = (await http.get("/peers", headers=auth)).json()
                return sorted(p["id"] for p in peers if p["status"] == "ONLINE") == site_ids

            async def run(topology: str) -> tuple[str, dict[str, Any]]:
                await wait_for(all_online, deadline_s=60)  # free again after the session before
                form = {"app": NAME, "rounds": str(ROUNDS), "epochs": "1", "lr": "0.1", "min_peers": "3",
                        "topology": topology, "name": f"{topology} under site users"}  # fmt: skip
                r = await http.post("/sessions/start", headers=auth, data=form)
                assert r.status_code == 201, r.text
                sid = r.json()["id"]

                async def finished() -> dict[str, Any] | None:
                    s = (await http.get(f"/sessions/{sid}", headers=auth)).json()
                    return s if s["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

                try:
                    session = await wait_for(finished, deadline_s=180)
                except TimeoutError:
                    pytest.fail(f"{topology} session did not end\n{server.tail(80)}\n{agents[0].tail()}")
                assert session["status"] == "COMPLETED", (session, server.tail(60), [a.tail() for a in agents])
                return sid, session

            await run("star")
            await run("hierarchical")
            sid, _ = await run("decentralised")
            rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
            assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
            assert all(r["metrics"]["digest_agreement"] == 1.0 and r["metrics"]["peers"] == 3 for r in rounds)
    finally:
        for agent in agents:
            agent.kill()
        server.stop()


# -- one site against another ----------------------------------------------------------------------


@dataclass
class TwoSites:
    names: Names
    alice: Peer  # the attacker: its site's login, with its password
    bob: Peer
    alice_peer: AmqpTransport  # each site's agent peer, as the agent opens it
    bob_peer: AmqpTransport


def agent_peer(sandbox: BrokerSandbox, site: dict[str, str]) -> AmqpTransport:
    """The peer connection ``Agent`` opens for a decentralised session's order."""
    agent = Agent(
        b"site-secret", AgentSites(site["client_id"], {}), BrokerSettings(site_url(sandbox, site), sandbox.namespace)
    )
    transport = agent._peer_link(new_peer_id(), KEY)
    assert isinstance(transport, AmqpTransport)
    return transport


@pytest.fixture
async def two_sites(sandbox: BrokerSandbox, tmp_path: Path) -> AsyncIterator[TwoSites]:
    a, b = create_sites(sandbox, tmp_path / "home", 2)
    logins = SenderLogins(lambda: {a["client_id"]: a["broker_user"], b["client_id"]: b["broker_user"]})
    hub_codec = WireCodec(lambda _to: KEY, Verifier(lambda _sender: KEY))
    hub = BrokerSettings(sandbox.admin_url, sandbox.namespace).transport(COORDINATOR_ID, hub_codec, logins=logins)
    async with hub, agent_peer(sandbox, a) as alice_peer, agent_peer(sandbox, b) as bob_peer:
        topic = "peers.session-1"
        await alice_peer.subscribe(topic)
        await bob_peer.subscribe(topic)
        alice, bob = (Peer(s["broker_user"], site_url(sandbox, s)) for s in (a, b))
        yield TwoSites(Names(sandbox.namespace), alice, bob, alice_peer, bob_peer)


async def attempt(peer: Peer, attack: Attack) -> BaseException | None:
    connection = await aio_pika.connect(peer.url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await attack(channel)
        except (ChannelAccessRefused, ChannelPreconditionFailed) as exc:
            return exc
    return None


async def refused(peer: Peer, attack: Attack, what: str) -> None:
    answer = await attempt(peer, attack)
    assert isinstance(answer, ChannelAccessRefused), f"{what}: the broker allowed it (answer: {answer!r})"


async def ignore(message: AbstractIncomingMessage) -> None:
    del message


async def consume(channel: AbstractChannel, queue: str) -> None:
    q = await channel.declare_queue(queue, passive=True)
    await q.consume(ignore)


async def test_an_agent_peer_cannot_read_another_sites_queues(two_sites: TwoSites) -> None:
    f = two_sites
    mine, theirs = f.alice_peer.node_id, f.bob_peer.node_id
    assert mine.endswith(f":{f.alice.login}") and theirs.endswith(f":{f.bob.login}")  # ids name the logins

    async def rebind(channel: AbstractChannel, exchange: str, key: str) -> None:
        own = await channel.declare_queue(f.names.node_queue(mine), passive=True)
        await own.bind(exchange, routing_key=key)

    assert await attempt(f.alice, lambda ch: consume(ch, f.names.node_queue(f.alice.login))) is None  # its own
    assert await attempt(f.alice, lambda ch: rebind(ch, f.names.up_exchange, up_binding(mine))) is None
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(theirs)), "consume the other's peer queue")
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(f.bob.login)), "consume the other's site queue")
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(COORDINATOR_ID)), "consume the server's queue")
    await refused(f.alice, lambda ch: rebind(ch, f.names.up_exchange, up_binding(theirs)), "bind the other's key")
    await refused(f.alice, lambda ch: rebind(ch, f.names.broadcast_exchange, "#"), "bind every broadcast")
    await refused(f.alice, lambda ch: rebind(ch, f.names.direct_exchange, f.bob.login), "bind the other's site key")
    await refused(f.alice, lambda ch: ch.queue_delete(f.names.node_queue(theirs)), "delete the other's peer queue")
    squat = f.names.node_queue(f"{secrets.token_hex(16)}:{f.bob.login}")
    await refused(f.alice, lambda ch: ch.declare_queue(squat, durable=True), "declare a queue in the other's name")


async def test_an_agent_peer_publishes_only_as_itself(two_sites: TwoSites) -> None:
    f = two_sites
    mine, theirs = f.alice_peer.node_id, f.bob_peer.node_id
    up, cast, topic = f.names.up_exchange, f.names.broadcast_exchange, "peers.session-1"
    assert await attempt(f.alice, lambda ch: publish(ch, cast, broadcast_key(topic, mine), f.alice.login)) is None
    await refused(f.alice, lambda ch: publish(ch, cast, broadcast_key(topic, theirs), f.alice.login), "broadcast")
    await refused(f.alice, lambda ch: publish(ch, up, up_key(mine, theirs), f.alice.login), "send as the peer")
    await refused(f.alice, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, f.bob.login), f.alice.login), "as site")
    await refused(f.alice, lambda ch: publish(ch, f.names.direct_exchange, theirs, f.alice.login), "direct")
    answer = await attempt(f.alice, lambda ch: publish(ch, up, up_key(theirs, mine), f.bob.login))
    assert isinstance(answer, ChannelPreconditionFailed), answer  # user_id of another login: 406


async def test_an_agent_cannot_delete_or_redeclare_the_broadcast_exchange(two_sites: TwoSites) -> None:
    f = two_sites
    for exchange in (f.names.broadcast_exchange, f.names.up_exchange):
        await refused(f.alice, lambda ch, exchange=exchange: ch.exchange_delete(exchange), f"delete {exchange}")
        await refused(
            f.alice,
            lambda ch, exchange=exchange: ch.declare_exchange(exchange, "fanout", durable=True),
            f"redeclare {exchange}",
        )


async def test_an_agent_peer_holding_the_session_key_cannot_speak_as_another(two_sites: TwoSites) -> None:
    """Alice signs as bob's peer (every peer of the session holds its key) and publishes under her
    own routing key, which the broker lets through: bob's peer drops it, then takes her own."""
    f = two_sites
    mine, topic = f.alice_peer.node_id, "peers.session-1"
    codec = peer_codec(KEY)
    forged = await codec.encode(topic, make(Kind.ANNOUNCE, f.bob_peer.node_id, body={"type": "bye"}))
    honest = await codec.encode(topic, make(Kind.ANNOUNCE, mine, body={"type": "bye"}))
    cast = f.names.broadcast_exchange
    for frame in (forged, honest):
        sent = await attempt(
            f.alice, lambda ch, frame=frame: publish(ch, cast, broadcast_key(topic, mine), f.alice.login, frame)
        )
        assert sent is None
    async with asyncio.timeout(30):
        first = await f.bob_peer.recv()
    assert first.sender == mine
    assert f.bob_peer.rejected == 1
