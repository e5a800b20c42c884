"""A decentralised session started from ``fedhive serve`` over RabbitMQ + PostgreSQL (real
processes: ``fedhive serve`` and one ``fedhive agent --virtual 3``) ends with a model in its owner's
registry: the session names it as its final model, and the file downloaded over REST is the model
the peers agreed on (its digest is the one the COMPLETED reason names). The model travels from one
agent to the server on the agent's own signed channel (``runtime.peer_model_upload``)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server
from site_agents import Rest, create_sites, read_sites, virtual_agents

from fedhive.core import codec
from fedhive.runtime.peer_rounds import params_digest
from fedhive.transports.amqp import delete_namespace
from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp, pytest.mark.postgres, pytest.mark.slow]


async def test_a_decentralised_session_from_serve_ends_with_the_agreed_model_downloadable(
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
    try:
        agents.wait_for("3 agents connected", timeout=90)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))
            await rest.wait_online(site_ids)
            sid = await rest.start("decentralised", rounds=2, min_peers=3, app=NAME, name="peers keep a model")
            session = await rest.ended(sid, 180, lambda: f"{server.tail(80)}\n{agents.tail()}")
            assert session["status"] == "COMPLETED", (session, server.tail(60), agents.tail())
            model = session["final_model"]
            assert model is not None, (session, server.tail(60))
            assert model["name"] == f"session-{sid}"
            url = f"/models/{model['name']}/versions/{model['version']}/download"
            got = await http.get(url, headers=rest.auth)
            assert got.status_code == 200, got.text
    finally:
        agents.kill()
        server.stop()
        await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ["coordinator", *site_ids]), 30)
    digest = params_digest(codec.decode(got.content, max_bytes=1 << 30))
    assert f"(model {digest[:12]})" in str(session["reason"]), session["reason"]
