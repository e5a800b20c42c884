"""Every topology from ``fedhive serve`` over RabbitMQ + PostgreSQL, with real processes: three
sites created with ``fedhive admin site create --count 3``, a running ``fedhive serve --broker
--db postgresql://`` with an app installed, and one ``fedhive agent --virtual 3`` process. One
after another, with no agent restarted, a star session, a hierarchical session over two combiners
that the server starts, and a decentralised session among the sites, each started over HTTP, end
COMPLETED in the REST API; the hierarchical one names each site's combiner, the decentralised one
records every round with all peers agreeing on the model."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server
from site_agents import Rest, create_sites, read_sites, virtual_agents

from fedhive.transports.amqp import delete_namespace
from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 3


async def test_star_hierarchical_and_decentralised_sessions_over_the_same_running_agents(
    rabbitmq_url: str, pg_database: str, tmp_path: Path
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    creds = tmp_path / "sites.jsonl"
    site_ids = [site.site_id for site in read_sites(create_sites(home, pg_database, 3, creds), creds)]
    folder = write_app(tmp_path / "apps")
    server = Server(
        home,
        {"broker_url": rabbitmq_url, "namespace": namespace, "db_url": pg_database},
        local_clients=0,
        extra=["--app", str(folder)],
    )
    agents = virtual_agents(
        3, creds, broker=rabbitmq_url, namespace=namespace, app=folder, state_dir=tmp_path / "state"
    )
    combiners: list[str] = []
    try:
        agents.wait_for("3 agents connected", timeout=90)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))

            async def run(topology: str) -> tuple[str, dict[str, Any]]:
                await rest.wait_online(site_ids)  # free again after the session before
                sid = await rest.start(topology, rounds=ROUNDS, min_peers=3, app=NAME, name=f"{topology} over agents")
                session = await rest.ended(sid, 180, lambda: f"{server.tail(80)}\n{agents.tail()}")
                assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
                return sid, session

            await run("star")

            sid, _ = await run("hierarchical")
            combiners[:] = [f"combiner-{sid}-1", f"combiner-{sid}-2"]
            # the session page's data: each combiner, and the sites behind it
            page = await rest.page(sid)
            assert sorted(c["combiner_id"] for c in page["combiners"]) == combiners, page["combiners"]
            assert sorted(site for c in page["combiners"] for site in c["clients"]) == site_ids

            sid, session = await run("decentralised")
            assert session["config"]["data"]["topology"] == "decentralised"
            rounds = await rest.rounds(sid)
            assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
            assert all(r["metrics"]["digest_agreement"] == 1.0 and r["metrics"]["peers"] == 3 for r in rounds)
            assert agents.popen.poll() is None  # the same agent process served all three
    finally:
        agents.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids, *combiners]), 30)
