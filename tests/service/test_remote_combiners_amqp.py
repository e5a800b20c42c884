"""Remote combiners joining a running ``fedhive serve`` with their own credentials, over RabbitMQ +
PostgreSQL with real processes: three sites (``fedhive admin site create --count 3``) in one
``fedhive agent --virtual 3``, two combiners (``fedhive admin site create --role combiner``) each a
``fedhive combiner --agent`` process. They are listed on ``GET /sites`` as combiners, ONLINE while
idle; a hierarchical session started with ``combiners=remote`` runs over both (the server starts
none) and completes, with the server killed and started again in the middle; after a revoke
(``fedhive admin site revoke``, while the server runs) the next such session uses the other one
only. No combiner process is restarted."""

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
from site_agents import Rest, create_sites, read_sites, sign_in, virtual_agents

from fedhive.transports.amqp import delete_namespace
from processes import Proc
from service.test_platform_flow import sign_up_and_in, wait_for
from service.test_remote_sites import admin

pytestmark = [pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
ROUNDS = 5
COMBINERS = ["comb-a", "comb-b"]


async def test_remote_combiners_serve_hierarchical_sessions_from_serve(
    rabbitmq_url: str, pg_database: str, tmp_path: Path
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    where = ["--home", str(home), "--db", pg_database]
    creds = tmp_path / "sites.jsonl"
    site_ids = [site.site_id for site in read_sites(create_sites(home, pg_database, 3, creds), creds)]
    secrets = {}
    for cid in COMBINERS:
        made = admin("site", "create", f"{cid} rack", "--id", cid, "--role", "combiner", "--json", *where)
        secrets[cid] = json.loads(made.out[-1])["secret"]
    folder = write_app(tmp_path / "apps")
    deployment = {"broker_url": rabbitmq_url, "namespace": namespace, "db_url": pg_database}

    def start_server() -> Server:
        return Server(home, deployment, local_clients=0, extra=["--app", str(folder)])

    server = start_server()
    agents = virtual_agents(
        3, creds, broker=rabbitmq_url, namespace=namespace, app=folder, state_dir=tmp_path / "state"
    )
    flags = ["--broker", rabbitmq_url, "--namespace", namespace, "--heartbeat-interval", "0.5"]
    combiners = {
        cid: Proc(cid, [*FEDHIVE, "combiner", "--agent", "--id", cid, *flags], env={"FEDHIVE_COMBINER_SECRET": secret})
        for cid, secret in secrets.items()
    }
    try:
        agents.wait_for("3 agents connected", timeout=90)
        for proc in combiners.values():
            proc.wait_for("connected; waiting for sessions", timeout=90)

        async def start_when_idle(rest: Rest, idle: list[str]) -> str:
            """A hierarchical session over remote combiners, once every site and the ``idle`` combiners
            (and no others) are ONLINE."""
            await rest.wait_online_roles({*((s, "site") for s in site_ids), *((c, "combiner") for c in idle)})
            form = {"combiners": "remote", "run_config": json.dumps({"sleep_s": 0.7})}
            return await rest.start("hierarchical", rounds=ROUNDS, min_peers=3, app=NAME, **form)

        async def ended(sid: str) -> tuple[dict[str, Any], dict[str, Any]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                rest = Rest(http, await sign_in(http))
                tails = "\n".join(p.tail() for p in combiners.values())
                session = await rest.ended(sid, 240, lambda: f"{server.tail(80)}\n{agents.tail()}\n{tails}")
                return session, await rest.page(sid)

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))
            sid = await start_when_idle(rest, COMBINERS)

            async def a_round() -> bool:
                return int((await http.get(f"/sessions/{sid}", headers=rest.auth)).json()["rounds_done"]) >= 1

            await wait_for(a_round, deadline_s=120)
        server.kill()  # the combiners and sites stay up; the session resumes from its checkpoint
        server = start_server()
        session, page = await ended(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60))
        assert session["rounds_done"] == ROUNDS
        assert f"resuming session {sid} at round" in "".join(server.lines), server.tail()
        assert sorted(c["combiner_id"] for c in page["combiners"]) == COMBINERS  # the server started none
        assert sorted(site for c in page["combiners"] for site in c["clients"]) == site_ids

        admin("site", "revoke", "comb-a", *where)  # while the server runs
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            sid = await start_when_idle(Rest(http, await sign_in(http)), ["comb-b"])
        session, page = await ended(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60))
        assert [c["combiner_id"] for c in page["combiners"]] == ["comb-b"]
        assert all(p.popen.poll() is None for p in [agents, *combiners.values()])  # none restarted
    finally:
        for proc in [agents, *combiners.values()]:
            proc.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids, *COMBINERS]), 30)
