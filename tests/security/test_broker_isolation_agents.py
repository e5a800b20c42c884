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
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import (
    Attack,
    BrokerSandbox,
    attempt,
    bind_own_queue,
    consume,
    create_sites,
    refused,
    site_url,
    start_site_agent,
)
from test_broker_isolation_peers import Peer, publish

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
from site_agents import Rest

from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp, pytest.mark.slow]
ROUNDS = 3
KEY = bytes.fromhex("7a" * 32)  # a decentralised session's federation key


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
        start_site_agent(sandbox, s, partition=i, partitions=3, app=folder, state_dir=tmp_path / "state")
        for i, s in enumerate(sites)
    ]
    try:
        for agent in agents:  # its queue is the server's to make: it waits for it
            agent.wait_for("connected", timeout=120)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))

            async def run(topology: str) -> tuple[str, dict[str, Any]]:
                await rest.wait_online(site_ids)  # free again after the session before
                name = f"{topology} under site users"
                sid = await rest.start(topology, rounds=ROUNDS, min_peers=3, app=NAME, epochs="1", name=name)
                session = await rest.ended(sid, 180, lambda: f"{server.tail(80)}\n{agents[0].tail()}")
                assert session["status"] == "COMPLETED", (session, server.tail(60), [a.tail() for a in agents])
                return sid, session

            await run("star")
            await run("hierarchical")
            sid, _ = await run("decentralised")
            rounds = await rest.rounds(sid)
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


async def test_an_agent_peer_cannot_read_another_sites_queues(two_sites: TwoSites) -> None:
    f = two_sites
    mine, theirs = f.alice_peer.node_id, f.bob_peer.node_id
    assert mine.endswith(f":{f.alice.login}") and theirs.endswith(f":{f.bob.login}")  # ids name the logins

    def rebind(exchange: str, key: str) -> Attack:
        """Bind its own peer queue to what ``key`` routes on ``exchange``."""
        return lambda ch: bind_own_queue(ch, f.names.node_queue(mine), exchange, key)

    assert await attempt(f.alice, lambda ch: consume(ch, f.names.node_queue(f.alice.login))) is None  # its own
    assert await attempt(f.alice, rebind(f.names.up_exchange, up_binding(mine))) is None
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(theirs)), "consume the other's peer queue")
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(f.bob.login)), "consume the other's site queue")
    await refused(f.alice, lambda ch: consume(ch, f.names.node_queue(COORDINATOR_ID)), "consume the server's queue")
    await refused(f.alice, rebind(f.names.up_exchange, up_binding(theirs)), "bind the other's key")
    await refused(f.alice, rebind(f.names.broadcast_exchange, "#"), "bind every broadcast")
    await refused(f.alice, rebind(f.names.direct_exchange, f.bob.login), "bind the other's site key")
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
