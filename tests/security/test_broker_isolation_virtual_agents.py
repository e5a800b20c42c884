"""Broker isolation for ``fedhive agent --virtual N --credentials FILE`` (issue 15): when FILE
(``fedhive admin site create --count N --broker-user ... --out-file``) carries the sites' broker
logins, each virtual agent logs in as its own site's user, and ``--broker`` names only the broker.

- One ``fedhive agent --virtual 3`` process, given a broker URL with no login at all (so RabbitMQ's
  ``guest``, which has no rights in the test's vhost), next to a running ``fedhive serve``: its
  three agents connect, each under its site's user, and a star session ends COMPLETED. With the
  agents sharing the ``--broker`` URL, none can connect and the test fails.
- One virtual agent's login, as ``agent_broker_urls`` hands it out: it publishes to the server as
  its own site (the positive control), and cannot publish as another site (403), with another
  site's ``user_id`` (406), or sign as another site with that site's secret (which the process
  holds: the server drops it because the login is not that site's).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelPreconditionFailed
from broker_sandbox import FEDHIVE, BrokerSandbox, attempt, create_sites, refused

from fedhive.cli.agent_logins import agent_broker_urls
from fedhive.core.envelope import Kind, make
from fedhive.core.signing import Verifier
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import parse_secret
from fedhive.runtime.networked import BrokerSettings, client_codec
from fedhive.transports.amqp_topology import Names, login_of, up_key
from fedhive.transports.broker_users import SenderLogins
from fedhive.transports.wire_codec import WireCodec
from processes import Proc

sys.path.insert(0, str(Path(__file__).parent.parent / "service"))
from platform_user_app import NAME, write_app  # the platform tests' helpers
from serve_process import Server
from site_agents import Rest

from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp]
SITES = 3


def no_login_url(sandbox: BrokerSandbox) -> str:
    """Where the broker is, and no login: what ``--broker`` needs when the sites carry theirs."""
    return f"amqp://{sandbox.host}:{sandbox.port}/{quote(sandbox.vhost, safe='')}"


@pytest.mark.slow
async def test_virtual_agents_each_under_their_own_site_user_complete_a_star_session(
    sandbox: BrokerSandbox, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    sites = create_sites(sandbox, home, SITES)
    credentials = home.parent / "sites.jsonl"  # where create_sites had them written
    assert credentials.stat().st_mode & 0o777 == 0o600
    folder = write_app(tmp_path / "apps")
    server = Server(
        home,
        {"broker_url": sandbox.admin_url, "namespace": sandbox.namespace},
        local_clients=0,
        extra=["--app", str(folder)],
    )
    args = ["agent", "--virtual", str(SITES), "--credentials", str(credentials), "--app", str(folder)]
    args += ["--namespace", sandbox.namespace, "--state-dir", str(tmp_path / "state"), "--heartbeat-interval", "0.5"]
    agents = Proc("agents", [*FEDHIVE, *args], env={"FEDHIVE_BROKER": no_login_url(sandbox)})
    try:
        assert not any(s["broker_password"] in " ".join(agents.popen.args) for s in sites)  # type: ignore[arg-type]
        agents.wait_for(f"{SITES} agents connected", timeout=180)  # each waits for the server to make its queue
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))
            await rest.wait_online([s["client_id"] for s in sites])
            sid = await rest.start("star", rounds=2, min_peers=SITES, app=NAME, epochs="1", name="virtual agents")
            session: dict[str, Any] = await rest.ended(sid, 240, lambda: f"{server.tail(80)}\n{agents.tail()}")
            assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
    finally:
        agents.kill()
        server.stop()


async def _publish(channel: AbstractChannel, exchange: str, key: str, user: str, frame: bytes = b"x") -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(frame, user_id=user), key, mandatory=True)


async def test_a_virtual_agent_cannot_publish_as_another(sandbox: BrokerSandbox, tmp_path: Path) -> None:
    a, b = create_sites(sandbox, tmp_path / "home", 2)
    ids = [a["client_id"], b["client_id"]]
    url_a, url_b = agent_broker_urls(no_login_url(sandbox), ids, tmp_path / "sites.jsonl")
    assert (login_of(url_a), login_of(url_b)) == (a["broker_user"], b["broker_user"])
    keys = {s["client_id"]: parse_secret(s["secret"]) for s in (a, b)}
    logins = SenderLogins(lambda: {s["client_id"]: s["broker_user"] for s in (a, b)})
    hub_codec = WireCodec(lambda to: keys[to], Verifier(keys.get))
    hub = BrokerSettings(sandbox.admin_url, sandbox.namespace).transport(COORDINATOR_ID, hub_codec, logins=logins)
    names, me, other = Names(sandbox.namespace), a["broker_user"], b["broker_user"]
    async with hub:
        # The positive control: agent a's own transport, as ``Agent.run`` opens it, reaches the server.
        async with BrokerSettings(url_a, sandbox.namespace).transport(
            ids[0], client_codec(ids[0], keys[ids[0]]), declares=False
        ) as own:
            await own.send(COORDINATOR_ID, make(Kind.HEARTBEAT, ids[0]))
            async with asyncio.timeout(30):
                assert (await hub.recv()).sender == ids[0]
        up = names.up_exchange
        await refused(url_a, lambda ch: _publish(ch, up, up_key(COORDINATOR_ID, ids[1]), me), "up as the other site")
        await refused(url_a, lambda ch: _publish(ch, names.direct_exchange, ids[1], me), "to the other's queue")
        answer = await attempt(url_a, lambda ch: _publish(ch, up, up_key(COORDINATOR_ID, ids[0]), other))
        assert isinstance(answer, ChannelPreconditionFailed), answer  # another login's user_id: 406
        # Signed as b with b's secret (the process holds every site's), published under a's own key.
        forged = await client_codec(ids[1], keys[ids[1]]).encode(COORDINATOR_ID, make(Kind.HEARTBEAT, ids[1]))
        honest = await client_codec(ids[0], keys[ids[0]]).encode(COORDINATOR_ID, make(Kind.HEARTBEAT, ids[0]))
        for frame in (forged, honest):
            sent = await attempt(
                url_a, lambda ch, frame=frame: _publish(ch, up, up_key(COORDINATOR_ID, ids[0]), me, frame)
            )
            assert sent is None
        async with asyncio.timeout(30):
            first = await hub.recv()
        assert first.sender == ids[0]
        assert hub.rejected == 1
