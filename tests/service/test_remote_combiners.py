"""Remote combiners for ``fedhive serve`` (``fedhive combiner --agent``), in one process on the
in-memory network with every message signed and checked as over RabbitMQ: three site agents and
two remote combiners, each with its own credentials from the platform's database (the combiners'
with role ``combiner``). The combiners are never claimed as sites; a hierarchical session started
with ``remote_combiners`` uses the ONLINE ones (the server starts none), each site talking to its
combiner with the link key the server gave both (neither holds the other's secret); afterwards
they are idle and ONLINE again; a revoked combiner is not used. Over RabbitMQ with real processes:
``test_remote_combiners_amqp``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from platform_user_app import NAME, write_app

from fedhive.app.loader import load_app
from fedhive.core.signing import Verifier
from fedhive.errors import ConfigError
from fedhive.runtime.agent import Agent, AgentSettings, AgentSites, agent_codec
from fedhive.runtime.combiner_agent import CombinerAgent, remote_combiner_codec
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import Hub
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.session_config import make_config
from fedhive.runtime.site_app import SiteApp
from fedhive.service.apps import InstalledApps
from fedhive.service.launcher import SessionRequest
from fedhive.service.peer_status import PeerStatusRecorder, SecretCache
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.session_manager import SessionManager
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.transports.base import Transport
from fedhive.transports.memory import MemoryNetwork
from fedhive.transports.wire_codec import WireCodec
from service.test_platform_flow import wait_for

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2", "site-3"]
COMBINERS = ["comb-a", "comb-b"]


@dataclass
class Federation:
    db: Database
    manager: SessionManager
    owner: int
    combiners: dict[str, CombinerAgent]
    restart_combiner: Callable[[str], CombinerAgent]

    def request(
        self, topology: str, *, remote: tuple[str, ...] | None = None, rounds: int = 3, sleep_s: float = 0.0
    ) -> SessionRequest:
        config = make_config(
            run_config={"sleep_s": sleep_s},
            rounds=rounds, epochs=2, lr=0.1, min_clients=3, heartbeat_interval_s=0.25, heartbeat_timeout_s=6.0,
            round_timeout_s=20.0, registration_timeout_s=30.0, app=NAME,
        )  # fmt: skip
        return SessionRequest(str(self.owner), config, 3, topology=topology, remote_combiners=remote)

    def statuses(self) -> dict[str, str]:
        with self.db.session(read_only=True) as s:
            return {c.id: c.status.value for c in users_repo.list_clients(s, None)}

    async def all_online(self) -> bool:
        statuses = await asyncio.to_thread(self.statuses)
        return bool(statuses) and all(v == "ONLINE" for v in statuses.values())

    async def ended(self, sid: str) -> tuple[str, str]:
        def status() -> tuple[str, str] | None:
            with self.db.session(read_only=True) as s:
                row = sessions_repo.session_by_id(s, sid)
                assert row is not None
                return (row.status.value, row.reason or "") if row.status.value not in ("RUNNING", "PENDING") else None

        async def check() -> tuple[str, str] | None:
            return await asyncio.to_thread(status)

        result: tuple[str, str] = await wait_for(check, deadline_s=90)
        return result

    def trained(self, sid: str) -> list[str]:
        with self.db.session(read_only=True) as s:
            return sorted({r.client_id for r in sessions_repo.client_results(s, sid)})

    def vias(self, sid: str) -> dict[str, str]:
        with self.db.session(read_only=True) as s:
            return {r.client_id: r.via for r in sessions_repo.client_results(s, sid) if r.via}


@contextlib.asynccontextmanager
async def federation(tmp_path: Path) -> AsyncIterator[Federation]:
    folder = write_app(tmp_path / "apps")
    db = Database(tmp_path / "fedhive.db")
    db.upgrade()
    box = SecretBox(new_key_text(), origin="test")
    keys = {}
    with db.session() as s:
        owner = users_repo.create_user(s, "ada@example.org", "not-a-real-hash").id
        for node in SITES + COMBINERS:
            role = "combiner" if node in COMBINERS else "site"
            keys[node] = users_repo.create_client(s, node, box=box, client_id=node, role=role)[1].encode()
    secrets = SecretCache(db, box, ttl_s=0.0)  # as the server reads them; a revoked one is gone at once
    loaded = load_app(str(folder))
    settings = AgentSettings(heartbeat_interval_s=0.25, coordinator_timeout_s=10.0)
    agents = {
        site: Agent(
            keys[site],
            AgentSites(site, {NAME: SiteApp(loaded, site, {"partition_id": i, "num_partitions": 3})}),
            BrokerSettings("amqp://unused"),
            settings,
        )
        for i, site in enumerate(SITES)
    }

    def connect(combiner: str, _links: dict[str, bytes]) -> Transport:
        return network.connect(combiner)

    combiners = {
        c: CombinerAgent(c, keys[c], functools.partial(connect, c), heartbeat_interval_s=0.25) for c in COMBINERS
    }

    def codec_for(node: str) -> WireCodec:
        """Each node's own codec, as ``fedhive serve``, ``fedhive agent`` and ``fedhive combiner --agent`` make it."""
        if node == COORDINATOR_ID:
            return WireCodec(nodes.secret_of, Verifier(nodes.secret_of))
        if node in agents:
            return agent_codec(keys[node], links=agents[node].links)
        return remote_combiner_codec(keys[node], combiners[node].links, None)

    network = MemoryNetwork(codec_for=codec_for)
    nodes = ServiceNodes(secrets, network=network)
    hub_transport = network.connect(COORDINATOR_ID)
    await hub_transport.start()
    hub = Hub(hub_transport, heartbeat_timeout_s=6.0)
    PeerStatusRecorder(db).attach(hub.bus)
    apps = InstalledApps.load([str(folder)])
    manager = SessionManager(db, LocalArtifactStore(tmp_path / "artifacts"), hub, apps=apps, nodes=nodes)

    async def serve(site: str) -> None:
        async with network.connect(site) as transport:
            await agents[site].serve_on(transport)

    tasks = [asyncio.create_task(hub.run())]
    tasks += [asyncio.create_task(serve(site), name=site) for site in SITES]
    tasks += [asyncio.create_task(c.run(), name=cid) for cid, c in combiners.items()]

    def restart_combiner(cid: str) -> CombinerAgent:
        """As if its process were killed and started again: its link keys are gone with it."""
        combiners[cid].stop()
        fresh = combiners[cid] = CombinerAgent(
            cid, keys[cid], functools.partial(connect, cid), heartbeat_interval_s=0.25
        )
        tasks.append(asyncio.create_task(fresh.run(), name=f"{cid}-again"))
        return fresh

    fed = Federation(db, manager, owner, combiners, restart_combiner)
    try:
        await wait_for(fed.all_online, deadline_s=30)
        yield fed
    finally:
        await manager.close()
        for c in combiners.values():
            c.stop()
        hub.stop()
        for task in tasks[1 : 1 + len(SITES)]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub_transport.close()
        db.dispose()


async def test_remote_combiners_serve_a_hierarchical_session_and_are_never_claimed_as_sites(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        star = await fed.manager.start(fed.request("star"))  # every ONLINE site: the combiners are not sites
        assert await fed.ended(star) == ("COMPLETED", "completed all 3 rounds")
        assert fed.trained(star) == SITES
        await wait_for(fed.all_online, deadline_s=30)

        sid = await fed.manager.start(fed.request("hierarchical", remote=()))
        status, reason = await fed.ended(sid)
        assert status == "COMPLETED", reason
        vias = fed.vias(sid)
        assert sorted(vias) == SITES and sorted(set(vias.values())) == COMBINERS  # both used, by their own ids
        await wait_for(fed.all_online, deadline_s=30)  # released, and idle again: no restart
        assert [c.sessions_served for c in fed.combiners.values()] == [1, 1]
        assert all(not c.links for c in fed.combiners.values())  # the session's link keys are dropped


async def test_a_revoked_combiner_is_not_used(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        with fed.db.session() as s:
            users_repo.delete_client(s, "comb-a")  # fedhive admin site revoke comb-a
        sid = await fed.manager.start(fed.request("hierarchical", remote=()))
        status, reason = await fed.ended(sid)
        assert status == "COMPLETED", reason
        assert set(fed.vias(sid).values()) == {"comb-b"}
        with pytest.raises(ConfigError, match="comb-a not ONLINE combiners"):
            await fed.manager.start(fed.request("hierarchical", remote=("comb-a",)))


async def test_a_remote_combiner_restarted_mid_session_joins_it_again(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        sid = await fed.manager.start(fed.request("hierarchical", remote=(), rounds=8, sleep_s=0.3))

        async def first_round() -> bool:
            return bool(await asyncio.to_thread(fed.vias, sid))

        await wait_for(first_round, deadline_s=60)
        fresh = fed.restart_combiner("comb-a")

        async def joined() -> bool:
            return fresh.session is not None and fresh.session.order.session_id == sid

        await wait_for(joined, deadline_s=60)  # its idle beats got it the join order again
        status, reason = await fed.ended(sid)
        assert status == "COMPLETED", reason
        assert fresh.sessions_served == 1  # it served the session to its end, and is idle again
        await wait_for(fed.all_online, deadline_s=30)
