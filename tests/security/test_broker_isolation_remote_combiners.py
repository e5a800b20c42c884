"""Broker isolation for the remote combiners of ``fedhive serve`` (issue 15): a combiner created
with ``fedhive admin site create --role combiner --broker-user rabbitmqctl`` logs in as a broker
user of its own with a combiner's rights (``BrokerGrant.combiner``), never the server's.

In a vhost of the test's own (``BrokerSandbox``): a running ``fedhive serve`` (the sandbox's
administrator), two ``fedhive agent`` processes and one ``fedhive combiner --agent``, each under
its own user. A hierarchical session over the remote combiner completes: the server declared and
bound its queue, and opened the way down to each site it assigned it. After the session, the
combiner's login cannot read a site's queue or the server's, publish down to any site (the
session's routes are closed; a third site was never assigned), publish as anyone else, bind its
queue to listen in, or delete an exchange.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from aio_pika.exceptions import PublishError
from broker_sandbox import BrokerSandbox, attempt, bind_own_queue, consume, create_sites, refused, start_site_agent
from test_broker_isolation_combiners import publish
from typer.testing import CliRunner

from fedhive.cli import admin_cmd
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.amqp_topology import Names, up_binding, up_key

sys.path.insert(0, str(Path(__file__).parent.parent / "service"))
from platform_user_app import NAME, write_app  # the platform tests' helpers
from serve_process import Server
from site_agents import Rest

from processes import Proc
from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp, pytest.mark.slow]
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
# Broker users are the broker's, not the vhost's: a name of this run's own, so that two runs of
# this test against one broker (two CI runs side by side) never meet.
COMBINER = f"rack-{secrets.token_hex(4)}"
ROUNDS = 3


def create_combiner(sandbox: BrokerSandbox, home: Path) -> dict[str, str]:
    args = ["site", "create", "rack a", "--id", COMBINER, "--role", "combiner", "--json", "--home", str(home)]
    args += ["--broker-user", "rabbitmqctl", "--namespace", sandbox.namespace, "--vhost", sandbox.vhost]
    result = CliRunner().invoke(admin_cmd.app, args)
    sandbox.users.add(COMBINER)  # deleted with the sandbox, made or not
    assert result.exit_code == 0, result.output
    made: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    assert made["broker_user"] == COMBINER
    return made


async def test_a_remote_combiner_under_its_own_broker_user_serves_a_session_and_nothing_else(
    sandbox: BrokerSandbox, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    sites = create_sites(sandbox, home, 3)  # the third never runs: the server only declares its queue
    site_ids = [s["client_id"] for s in sites]
    combiner = create_combiner(sandbox, home)
    combiner_url = sandbox.url(combiner["broker_user"], combiner["broker_password"])
    folder = write_app(tmp_path / "apps")
    server = Server(
        home,
        {"broker_url": sandbox.admin_url, "namespace": sandbox.namespace},
        local_clients=0,
        extra=["--app", str(folder)],
    )
    agents = [
        start_site_agent(sandbox, s, partition=i, partitions=3, app=folder, state_dir=tmp_path / "state")
        for i, s in enumerate(sites[:2])
    ]
    args = ["combiner", "--agent", "--id", COMBINER, "--namespace", sandbox.namespace, "--heartbeat-interval", "0.5"]
    rack = Proc(
        COMBINER, [*FEDHIVE, *args], env={"FEDHIVE_BROKER": combiner_url, "FEDHIVE_COMBINER_SECRET": combiner["secret"]}
    )
    names = Names(sandbox.namespace)
    try:
        for proc in [*agents, rack]:  # their queues are the server's to make: they wait for them
            proc.wait_for("connected", timeout=120)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))
            await rest.wait_online_roles({(site_ids[0], "site"), (site_ids[1], "site"), (COMBINER, "combiner")}, 90)
            sid = await rest.start("hierarchical", rounds=ROUNDS, min_peers=2, app=NAME, epochs="1", combiners="remote")
            session = await rest.ended(sid, 180, lambda: f"{server.tail(80)}\n{rack.tail()}\n{agents[0].tail()}")
            assert session["status"] == "COMPLETED", (session, server.tail(60), rack.tail())
            page = await rest.page(sid)
            assert [c["combiner_id"] for c in page["combiners"]] == [COMBINER]  # the server started none
            assert sorted(site for c in page["combiners"] for site in c["clients"]) == site_ids[:2]

        down, up, me = names.down_exchange, names.up_exchange, COMBINER
        # Its own queue: yes (the positive control of the checks below).
        assert await attempt(combiner_url, lambda ch: consume(ch, names.node_queue(me))) is None
        for other in (COORDINATOR_ID, *site_ids):
            await refused(combiner_url, lambda ch, o=other: consume(ch, names.node_queue(o)), f"read {other}'s queue")
        # Down to a site: the session's routes were closed when it ended; the third was never routed.
        for site in site_ids:
            answer = await attempt(combiner_url, lambda ch, s=site: publish(ch, down, up_key(s, me), me))
            assert isinstance(answer, PublishError), f"{site} reachable after the session: {answer!r}"
        await refused(combiner_url, lambda ch: publish(ch, up, up_key(COORDINATOR_ID, site_ids[0]), me), "as a site")
        await refused(combiner_url, lambda ch: publish(ch, up, up_key(site_ids[0], me), me), "up to a site")
        await refused(combiner_url, lambda ch: publish(ch, names.direct_exchange, site_ids[0], me), "direct")
        own = names.node_queue(me)
        await refused(combiner_url, lambda ch: bind_own_queue(ch, own, down, "#"), "bind to every site's messages")
        await refused(
            combiner_url, lambda ch: bind_own_queue(ch, own, up, up_binding(COORDINATOR_ID)), "bind the server's key"
        )
        for exchange in (up, down, names.direct_exchange, names.broadcast_exchange):
            await refused(combiner_url, lambda ch, e=exchange: ch.exchange_delete(e), f"delete {exchange}")
        await refused(combiner_url, lambda ch: ch.queue_delete(names.node_queue(COORDINATOR_ID)), "delete a queue")
        assert rack.popen.poll() is None  # refused on throwaway connections: the combiner runs on
    finally:
        for proc in [*agents, rack]:
            proc.kill()
        server.stop()
