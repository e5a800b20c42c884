"""The README's remote-site flow, end to end: sites created with ``fedhive admin site create``
(here ``--count 2``), a running ``fedhive serve --broker`` with an app installed, site agents in
another process (``fedhive agent --virtual 2``) that sign with the secrets the admin command
printed, and a session of the app over them, started over HTTP, that completes."""

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

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def admin(*args: str) -> Proc:
    proc = Proc("admin", [*FEDHIVE, "admin", *args])
    assert proc.finish(60) == 0, proc.tail()
    return proc


async def test_sites_created_by_the_admin_join_a_running_server_and_train(rabbitmq_url: str, tmp_path: Path) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    creds = tmp_path / "sites.jsonl"
    admin("site", "create", "ward", "--count", "2", "--out-file", str(creds), "--home", str(home))
    site_ids = [json.loads(line)["client_id"] for line in creds.read_text().splitlines()]
    assert len(site_ids) == 2
    folder = write_app(tmp_path / "apps")
    server = Server(
        home, {"broker_url": rabbitmq_url, "namespace": namespace}, local_clients=0, extra=["--app", str(folder)]
    )
    agents = Proc(
        "agents",
        [*FEDHIVE, "agent", "--broker", rabbitmq_url, "--namespace", namespace, "--virtual", "2",
         "--credentials", str(creds), "--app", str(folder), "--state-dir", str(tmp_path / "state"),
         "--heartbeat-interval", "0.5"],
    )  # fmt: skip
    try:
        agents.wait_for("2 agents connected", timeout=90)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            auth = await sign_up_and_in(http)

            async def both_online() -> bool:
                peers = (await http.get("/peers", headers=auth)).json()
                return sorted(p["id"] for p in peers if p["status"] == "ONLINE") == sorted(site_ids)

            await wait_for(both_online, deadline_s=60)
            form = {"app": NAME, "rounds": "2", "epochs": "2", "lr": "0.1", "min_peers": "2"}
            r = await http.post("/sessions/start", headers=auth, data=form)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]

            async def finished() -> dict[str, Any] | None:
                status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
                return status if status["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

            status = await wait_for(finished, deadline_s=120)
            assert status["status"] == "COMPLETED", (status, server.tail(), agents.tail())
            partitions = sorted(res["metrics"]["partition"] for res in status["last_results"])
            assert partitions == [0.0, 1.0]  # each virtual agent trained its own share
    finally:
        agents.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids]), 30)
