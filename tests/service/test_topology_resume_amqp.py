"""``fedhive serve`` killed with SIGKILL mid-session and started again, over RabbitMQ + PostgreSQL
with real processes: one ``fedhive agent --virtual 3`` stays up throughout. A hierarchical session
resumes from its last checkpoint with new combiners (every round recorded once: none skipped, none
run twice); a decentralised one is watched again while its peers, which never needed the server,
go on (rounds they finished while no server watched are recorded from their repeated reports).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server
from site_agents import Rest, create_sites, read_sites, sign_in, virtual_agents

from fedhive.transports.amqp import delete_namespace
from service.test_platform_flow import sign_up_and_in, wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 6


async def test_hierarchical_and_decentralised_sessions_go_on_after_the_server_is_killed(
    rabbitmq_url: str, pg_database: str, tmp_path: Path
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    creds = tmp_path / "sites.jsonl"
    site_ids = [site.site_id for site in read_sites(create_sites(home, pg_database, 3, creds), creds)]
    folder = write_app(tmp_path / "apps")
    deployment = {"broker_url": rabbitmq_url, "namespace": namespace, "db_url": pg_database}

    def start_server() -> Server:
        return Server(home, deployment, local_clients=0, extra=["--app", str(folder)])

    server = start_server()
    agents = virtual_agents(
        3, creds, broker=rabbitmq_url, namespace=namespace, app=folder, state_dir=tmp_path / "state"
    )
    combiners: list[str] = []
    new_account = True
    try:
        agents.wait_for("3 agents connected", timeout=90)

        async def interrupted(topology: str) -> tuple[str, int]:
            """Starts a session, kills the server once it has recorded a round, starts it again."""
            nonlocal server, new_account
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                rest = Rest(http, await (sign_up_and_in(http) if new_account else sign_in(http)))
                new_account = False
                await rest.wait_online(site_ids)
                config = json.dumps({"sleep_s": 1.0})
                sid = await rest.start(topology, rounds=ROUNDS, min_peers=3, app=NAME, run_config=config)

                async def a_round() -> int:
                    return int((await http.get(f"/sessions/{sid}", headers=rest.auth)).json()["rounds_done"])

                done = await wait_for(a_round, deadline_s=120)
            server.kill()
            server = start_server()
            return sid, done

        async def finished(sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                rest = Rest(http, await sign_in(http))
                session = await rest.ended(sid, 240, lambda: f"{server.tail(80)}\n{agents.tail()}")
                return session, await rest.rounds(sid)

        sid, before = await interrupted("hierarchical")
        session, rounds = await finished(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))  # none skipped, none twice
        resumed = re.search(rf"resuming session {sid} at round (\d+)", "".join(server.lines))
        assert resumed is not None and int(resumed.group(1)) >= before + 1, server.tail()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            page = await Rest(http, await sign_in(http)).page(sid)
        combiners[:] = sorted(c["combiner_id"] for c in page["combiners"])
        assert len(combiners) == 4, combiners  # two before the kill, two new ones after it
        assert sum(c.startswith(f"combiner-{sid}-") and c.count("-") == 3 for c in combiners) == 2, combiners

        sid, _ = await interrupted("decentralised")
        session, rounds = await finished(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
        assert session["reason"].startswith(f"completed all {ROUNDS} rounds among 3 peers"), session
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        assert all(r["metrics"]["digest_agreement"] == 1.0 for r in rounds)
        assert f"resuming decentralised session {sid}" in "".join(server.lines)
        assert agents.popen.poll() is None  # the same agent process throughout
    finally:
        agents.kill()
        server.stop()
        nodes = ["coordinator", *site_ids, *combiners]
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, nodes), 30)
