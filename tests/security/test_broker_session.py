"""A whole session with isolated broker users (issue 15, part 1): the coordinator, and two client
processes that each log in as the broker user ``fedhive clients add --broker-user rabbitmqctl``
made for it (no configure rights: they only find the queues the coordinator created). Mid-session
a broker administrator deletes the coordinator's queue and the namespace's exchanges; the
coordinator declares and binds them again and the session completes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aio_pika
import pytest
from broker_sandbox import FEDHIVE, BrokerSandbox, provision_clients

from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.amqp_topology import Names
from processes import Proc

sys.path.insert(0, str(Path(__file__).parent.parent / "networked"))
from amqp_cluster import demo_part, session_toml  # the networked tests' helpers

pytestmark = pytest.mark.amqp
ROUNDS = 5


async def delete_topology(sandbox: BrokerSandbox) -> None:
    """What a broker administrator (or, before isolation, any client) could do mid-session."""
    names = Names(sandbox.namespace)
    connection = await aio_pika.connect(sandbox.admin_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(names.node_queue(COORDINATOR_ID))
        await channel.exchange_delete(names.up_exchange)
        await channel.exchange_delete(names.direct_exchange)


def test_a_session_of_isolated_clients_survives_its_queue_and_exchanges_being_deleted(
    sandbox: BrokerSandbox, tmp_path: Path
) -> None:
    store = tmp_path / "clients.json"
    sites = provision_clients(sandbox, store, 2)
    config = session_toml(
        tmp_path / "session.toml",
        rounds=ROUNDS,
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=20.0,  # two clients and a coordinator share two loaded cores
        round_timeout_s=20,
    )
    procs: list[Proc] = []
    try:
        coordinator_args = ["coordinator", "--namespace", sandbox.namespace, "--config", str(config)]
        coordinator_args += ["--store", str(store), "--out", str(tmp_path / "runs"), "--json"]
        coordinator = Proc("coordinator", [*FEDHIVE, *coordinator_args], env={"FEDHIVE_BROKER": sandbox.admin_url})
        procs.append(coordinator)
        coordinator.wait_for("coordinator ready", stream="err")
        for i, site in enumerate(sites, start=1):
            env = {
                "FEDHIVE_BROKER": sandbox.url(site["broker_user"], site["broker_password"]),
                "FEDHIVE_CLIENT_SECRET": site["secret"],
            }
            args = ["client", "--namespace", sandbox.namespace, "--id", site["client_id"], *demo_part(i, 2)]
            procs.append(Proc(site["client_id"], [*FEDHIVE, *args], env=env))
        procs[1].wait_for("round 2: training", timeout=120)
        asyncio.run(delete_topology(sandbox))

        assert coordinator.finish(timeout=300) == 0, coordinator.tail()
        summary = json.loads(coordinator.out[-1])
        assert summary["rounds"] == ROUNDS
        log = "\n".join(coordinator.err)
        assert "declaring them again" in log or "bound it again" in log, coordinator.tail()
        for client in procs[1:]:
            assert client.finish(timeout=60) == 0, client.tail()
    finally:
        for p in procs:
            p.kill()
