"""Every topology from ``fedhive serve`` over RabbitMQ + PostgreSQL, with real processes: three
sites created with ``fedhive admin site create --count 3``, a running ``fedhive serve --broker
--db postgresql://`` with an app installed, and one ``fedhive agent --virtual 3`` process. One
after another, with no agent restarted, a star session, a hierarchical session over two combiners
that the server starts, and a decentralised session among the sites, each started over HTTP, end
COMPLETED in the REST API; the hierarchical one names each site's combiner, the decentralised one
records every round with all peers agreeing on the model."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server

from fedhive.transports.amqp import delete_namespace
from processes import Proc
from service.test_platform_flow import sign_up_and_in, wait_for
from service.test_remote_sites import admin

pytestmark = [pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
ROUNDS = 3


async def test_star_hierarchical_and_decentralised_sessions_over_the_same_running_agents(
    rabbitmq_url: str, pg_database: str, tmp_path: Path
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    creds = tmp_path / "sites.jsonl"
    admin("site", "create", "ward", "--count", "3", "--out-file", str(creds), "--home", str(home), "--db", pg_database)
    site_ids = sorted(json.loads(line)["client_id"] for line in creds.read_text().splitlines())
    folder = write_app(tmp_path / "apps")
    server = Server(
        home,
        {"broker_url": rabbitmq_url, "namespace": namespace, "db_url": pg_database},
        local_clients=0,
        extra=["--app", str(folder)],
    )
    agents = Proc(
        "agents",
        [*FEDHIVE, "agent", "--broker", rabbitmq_url, "--namespace", namespace, "--virtual", "3",
         "--credentials", str(creds), "--app", str(folder), "--state-dir", str(tmp_path / "state"),
         "--heartbeat-interval", "0.5"],
    )  # fmt: skip
    combiners: list[str] = []
    try:
        agents.wait_for("3 agents connected", timeout=90)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            auth = await sign_up_and_in(http)

            async def all_online() -> bool:
                peers = (await http.get("/peers", headers=auth)).json()
                return sorted(p["id"] for p in peers if p["status"] == "ONLINE") == site_ids

            async def run(topology: str) -> tuple[str, dict[str, Any]]:
                await wait_for(all_online, deadline_s=60)  # free again after the session before
                form = {"app": NAME, "rounds": str(ROUNDS), "epochs": "2", "lr": "0.1", "min_peers": "3",
                        "topology": topology, "name": f"{topology} over agents"}  # fmt: skip
                r = await http.post("/sessions/start", headers=auth, data=form)
                assert r.status_code == 201, r.text
                sid = r.json()["id"]

                async def finished() -> dict[str, Any] | None:
                    s = (await http.get(f"/sessions/{sid}", headers=auth)).json()
                    return s if s["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

                try:
                    session = await wait_for(finished, deadline_s=180)
                except TimeoutError:
                    pytest.fail(f"{topology} session did not end\n{server.tail(80)}\n{agents.tail()}")
                assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
                return sid, session

            await run("star")

            sid, _ = await run("hierarchical")
            combiners[:] = [f"combiner-{sid}-1", f"combiner-{sid}-2"]
            # the session page's data: each combiner, and the sites behind it
            page = (await http.get(f"/ui/data/sessions/{sid}", headers=auth)).json()
            assert sorted(c["combiner_id"] for c in page["combiners"]) == combiners, page["combiners"]
            assert sorted(site for c in page["combiners"] for site in c["clients"]) == site_ids

            sid, session = await run("decentralised")
            assert session["config"]["data"]["topology"] == "decentralised"
            rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
            assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
            assert all(r["metrics"]["digest_agreement"] == 1.0 and r["metrics"]["peers"] == 3 for r in rounds)
            assert agents.popen.poll() is None  # the same agent process served all three
    finally:
        agents.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids, *combiners]), 30)
