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

from fedhive.transports.amqp import delete_namespace
from processes import Proc
from service.test_platform_flow import wait_for
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
    admin("site", "create", "ward", "--count", "3", "--out-file", str(creds), *where)
    site_ids = sorted(json.loads(line)["client_id"] for line in creds.read_text().splitlines())
    secrets = {}
    for cid in COMBINERS:
        made = admin("site", "create", f"{cid} rack", "--id", cid, "--role", "combiner", "--json", *where)
        secrets[cid] = json.loads(made.out[-1])["secret"]
    folder = write_app(tmp_path / "apps")
    deployment = {"broker_url": rabbitmq_url, "namespace": namespace, "db_url": pg_database}

    def start_server() -> Server:
        return Server(home, deployment, local_clients=0, extra=["--app", str(folder)])

    server = start_server()
    agents = Proc(
        "agents",
        [*FEDHIVE, "agent", "--broker", rabbitmq_url, "--namespace", namespace, "--virtual", "3",
         "--credentials", str(creds), "--app", str(folder), "--state-dir", str(tmp_path / "state"),
         "--heartbeat-interval", "0.5"],
    )  # fmt: skip
    flags = ["--broker", rabbitmq_url, "--namespace", namespace, "--heartbeat-interval", "0.5"]
    combiners = {
        cid: Proc(cid, [*FEDHIVE, "combiner", "--agent", "--id", cid, *flags], env={"FEDHIVE_COMBINER_SECRET": secret})
        for cid, secret in secrets.items()
    }
    try:
        agents.wait_for("3 agents connected", timeout=90)
        for proc in combiners.values():
            proc.wait_for("connected; waiting for sessions", timeout=90)
        login = {"email": "ada@example.org", "password": "correct horse"}

        async def signed_in(http: httpx.AsyncClient) -> dict[str, str]:
            token = (await http.post("/auth/signin", json=login)).json()["access_token"]
            return {"Authorization": f"Bearer {token}"}

        async def all_idle(http: httpx.AsyncClient, auth: dict[str, str], combiners: list[str]) -> bool:
            sites = (await http.get("/sites", headers=auth)).json()
            online = {(s["id"], s["role"]) for s in sites if s["status"] == "ONLINE"}
            return online == {*((s, "site") for s in site_ids), *((c, "combiner") for c in combiners)}

        async def start(http: httpx.AsyncClient, auth: dict[str, str]) -> str:
            form = {"app": NAME, "rounds": str(ROUNDS), "epochs": "2", "lr": "0.1", "min_peers": "3",
                    "topology": "hierarchical", "combiners": "remote",
                    "run_config": json.dumps({"sleep_s": 0.7})}  # fmt: skip
            r = await http.post("/sessions/start", headers=auth, data=form)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        async def ended(sid: str) -> tuple[dict[str, Any], dict[str, Any]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                auth = await signed_in(http)

                async def done() -> dict[str, Any] | None:
                    s = (await http.get(f"/sessions/{sid}", headers=auth)).json()
                    return s if s["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

                try:
                    session = await wait_for(done, deadline_s=240)
                except TimeoutError:
                    tails = "\n".join(p.tail() for p in combiners.values())
                    pytest.fail(f"session {sid} did not end\n{server.tail(80)}\n{agents.tail()}\n{tails}")
                page = (await http.get(f"/ui/data/sessions/{sid}", headers=auth)).json()
                return session, page

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.post("/auth/signup", json=login)).status_code == 201
            auth = await signed_in(http)
            await wait_for(lambda: all_idle(http, auth, COMBINERS), deadline_s=60)
            sid = await start(http, auth)

            async def a_round() -> bool:
                return int((await http.get(f"/sessions/{sid}", headers=auth)).json()["rounds_done"]) >= 1

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
            auth = await signed_in(http)
            await wait_for(lambda: all_idle(http, auth, ["comb-b"]), deadline_s=60)
            sid = await start(http, auth)
        session, page = await ended(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60))
        assert [c["combiner_id"] for c in page["combiners"]] == ["comb-b"]
        assert all(p.popen.poll() is None for p in [agents, *combiners.values()])  # none restarted
    finally:
        for proc in [agents, *combiners.values()]:
            proc.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids, *COMBINERS]), 30)
