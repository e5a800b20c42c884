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
ROUNDS = 6
ENDED = ("COMPLETED", "FAILED", "CANCELLED")


async def sign_in(http: httpx.AsyncClient, *, new: bool) -> dict[str, str]:
    login = {"email": "ada@example.org", "password": "correct horse"}
    if new:
        assert (await http.post("/auth/signup", json=login)).status_code == 201
    r = await http.post("/auth/signin", json=login)
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_hierarchical_and_decentralised_sessions_go_on_after_the_server_is_killed(
    rabbitmq_url: str, pg_database: str, tmp_path: Path
) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    creds = tmp_path / "sites.jsonl"
    admin("site", "create", "ward", "--count", "3", "--out-file", str(creds), "--home", str(home), "--db", pg_database)
    site_ids = sorted(json.loads(line)["client_id"] for line in creds.read_text().splitlines())
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
    combiners: list[str] = []
    new_account = True
    try:
        agents.wait_for("3 agents connected", timeout=90)

        async def interrupted(topology: str) -> tuple[str, int]:
            """Starts a session, kills the server once it has recorded a round, starts it again."""
            nonlocal server, new_account
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                auth = await sign_in(http, new=new_account)
                new_account = False

                async def all_online() -> bool:
                    peers = (await http.get("/peers", headers=auth)).json()
                    return sorted(p["id"] for p in peers if p["status"] == "ONLINE") == site_ids

                await wait_for(all_online, deadline_s=60)
                form = {"app": NAME, "rounds": str(ROUNDS), "epochs": "2", "lr": "0.1", "min_peers": "3",
                        "topology": topology, "run_config": json.dumps({"sleep_s": 1.0})}  # fmt: skip
                r = await http.post("/sessions/start", headers=auth, data=form)
                assert r.status_code == 201, r.text
                sid: str = r.json()["id"]

                async def a_round() -> int:
                    return int((await http.get(f"/sessions/{sid}", headers=auth)).json()["rounds_done"])

                done = await wait_for(a_round, deadline_s=120)
            server.kill()
            server = start_server()
            return sid, done

        async def finished(sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                auth = await sign_in(http, new=False)

                async def ended() -> dict[str, Any] | None:
                    s = (await http.get(f"/sessions/{sid}", headers=auth)).json()
                    return s if s["status"] in ENDED else None

                try:
                    session = await wait_for(ended, deadline_s=240)
                except TimeoutError:
                    pytest.fail(f"session {sid} did not end\n{server.tail(80)}\n{agents.tail()}")
                rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
                return session, rounds

        sid, before = await interrupted("hierarchical")
        session, rounds = await finished(sid)
        assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))  # none skipped, none twice
        resumed = re.search(rf"resuming session {sid} at round (\d+)", "".join(server.lines))
        assert resumed is not None and int(resumed.group(1)) >= before + 1, server.tail()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            page = (await http.get(f"/ui/data/sessions/{sid}", headers=await sign_in(http, new=False))).json()
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
