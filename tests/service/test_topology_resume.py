"""A hierarchical or decentralised session from the platform goes on after the server restarts.

In one process on the in-memory network: three long-lived site agents stay up while the
"server" (hub, session manager, the combiners it runs) is stopped mid-session without ending the
session, and a new one, built on the same database, resumes what was RUNNING. A hierarchical
session continues from its last checkpoint with new combiners (no round run twice, none skipped);
a decentralised one is watched again while its peers go on by themselves. When the agents
restarted too, no peer holds the decentralised session's model any more, and it fails saying so.
Over RabbitMQ with real processes: ``test_topology_resume_amqp``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from platform_user_app import NAME, write_app

from fedhive.app.loader import LoadedApp, load_app
from fedhive.runtime.agent import Agent, AgentSettings, AgentSites
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import Hub
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.session_config import make_config
from fedhive.runtime.site_app import SiteApp
from fedhive.service.apps import InstalledApps
from fedhive.service.launcher import SessionRequest
from fedhive.service.peer_status import PeerStatusRecorder
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.session_manager import SessionManager
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.transports.base import Transport
from fedhive.transports.memory import MemoryNetwork
from service.test_platform_flow import wait_for

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2", "site-3"]
ROUNDS = 6


@dataclass
class Server:
    hub: Hub
    transport: Transport
    manager: SessionManager
    task: asyncio.Task[None]

    async def crash(self) -> None:
        """Gone without ending its sessions: they stay RUNNING in the database. Its combiners
        die first, as they would with the process."""
        for sid in self.manager.running:
            session = self.manager.hierarchical(sid)
            for cid in session.combiner_ids if session is not None else []:
                session.stop_combiner(cid)
        await self.manager.close()
        self.hub.stop()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.transport.close()


@dataclass
class Federation:
    tmp: Path
    db: Database
    network: MemoryNetwork
    keys: dict[str, bytes]
    owner: int
    apps: InstalledApps
    loaded: LoadedApp
    agents: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def server(self) -> Server:
        """A server on the federation's database, resuming whatever the last one left RUNNING."""
        transport = self.network.connect(COORDINATOR_ID)
        await transport.start()
        hub = Hub(transport, heartbeat_timeout_s=6.0)
        PeerStatusRecorder(self.db).attach(hub.bus)
        nodes = ServiceNodes(self.keys.get, network=self.network)
        artifacts = LocalArtifactStore(self.tmp / "artifacts")
        manager = SessionManager(self.db, artifacts, hub, apps=self.apps, nodes=nodes)
        task = asyncio.create_task(hub.run())
        await manager.resume_running()
        return Server(hub, transport, manager, task)

    def start_agents(self) -> None:
        settings = AgentSettings(heartbeat_interval_s=0.25, coordinator_timeout_s=10.0)

        async def run_agent(i: int, site: str) -> None:
            node = {"partition_id": i, "num_partitions": len(SITES)}
            app = SiteApp(self.loaded, site, node, state_dir=self.tmp / "state" / site)
            agent = Agent(
                self.keys[site], AgentSites(site, {NAME: app}), BrokerSettings("amqp://unused"), settings,
                peer_link=lambda peer_id, _key: self.network.connect(peer_id),
            )  # fmt: skip
            async with self.network.connect(site) as transport:
                await agent.serve_on(transport)

        self.agents = {site: asyncio.create_task(run_agent(i, site), name=site) for i, site in enumerate(SITES)}

    async def stop_agents(self) -> None:
        for task in self.agents.values():
            task.cancel()
        await asyncio.gather(*self.agents.values(), return_exceptions=True)

    def request(self, topology: str, *, combiners: int = 0) -> SessionRequest:
        config = make_config(
            rounds=ROUNDS, epochs=2, lr=0.1, min_clients=3, heartbeat_interval_s=0.25, heartbeat_timeout_s=6.0,
            round_timeout_s=20.0, registration_timeout_s=30.0, run_config={"sleep_s": 0.3}, app=NAME,
        )  # fmt: skip
        return SessionRequest(str(self.owner), config, 3, topology=topology, combiners=combiners)

    async def rounds_done(self, sid: str, at_least: int) -> None:
        async def done() -> bool:
            return len(await asyncio.to_thread(self.rounds, sid)) >= at_least

        await wait_for(done, deadline_s=60)

    async def ended(self, sid: str, deadline_s: float = 120.0) -> tuple[str, str]:
        def status() -> tuple[str, str] | None:
            with self.db.session(read_only=True) as s:
                row = sessions_repo.session_by_id(s, sid)
                assert row is not None
                return (row.status.value, row.reason or "") if row.status.value != "RUNNING" else None

        async def check() -> tuple[str, str] | None:
            return await asyncio.to_thread(status)

        result: tuple[str, str] = await wait_for(check, deadline_s=deadline_s)
        return result

    def rounds(self, sid: str) -> list[tuple[int, dict[str, object]]]:
        with self.db.session(read_only=True) as s:
            return [(r.round, dict(r.metrics)) for r in sessions_repo.list_rounds(s, sid)]

    def vias(self, sid: str) -> list[tuple[int, str, str | None]]:
        with self.db.session(read_only=True) as s:
            return [(r.round, r.client_id, r.via) for r in sessions_repo.client_results(s, sid)]

    async def all_online(self) -> bool:
        def online() -> bool:
            with self.db.session(read_only=True) as s:
                return sorted(c.id for c in users_repo.list_clients(s, None) if c.status.value == "ONLINE") == SITES

        return await asyncio.to_thread(online)


@contextlib.asynccontextmanager
async def federation(tmp_path: Path) -> AsyncIterator[Federation]:
    folder = write_app(tmp_path / "apps")
    db = Database(tmp_path / "fedhive.db")
    db.upgrade()
    box = SecretBox(new_key_text(), origin="test")
    keys = {}
    with db.session() as s:
        owner = users_repo.create_user(s, "ada@example.org", "not-a-real-hash").id
        for site in SITES:
            keys[site] = users_repo.create_client(s, site, box=box, client_id=site)[1].encode()
    fed = Federation(
        tmp_path, db, MemoryNetwork(), keys, owner, InstalledApps.load([str(folder)]), load_app(str(folder))
    )
    fed.start_agents()
    try:
        yield fed
    finally:
        await fed.stop_agents()
        db.dispose()


async def test_a_hierarchical_session_resumes_from_its_checkpoint_with_new_combiners(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        server = await fed.server()
        await wait_for(fed.all_online, deadline_s=30)
        sid = await server.manager.start(fed.request("hierarchical", combiners=2))
        await fed.rounds_done(sid, 2)
        await server.crash()
        before = len(fed.rounds(sid))
        assert before < ROUNDS, "the session ended before the crash; make rounds slower"

        server = await fed.server()
        try:
            status, reason = await fed.ended(sid)
            assert status == "COMPLETED", reason
            assert [r for r, _ in fed.rounds(sid)] == list(range(1, ROUNDS + 1))  # none twice, none skipped
            after = {via for rnd, _, via in fed.vias(sid) if rnd > before and via}  # a combiner's own row has none
            assert len(after) == 2 and all(v.startswith(f"combiner-{sid}-") for v in after), after
            assert not after & {f"combiner-{sid}-1", f"combiner-{sid}-2"}  # the new process's combiners
            assert sorted(c for rnd, c, via in fed.vias(sid) if rnd == ROUNDS and via) == SITES
            await wait_for(fed.all_online, deadline_s=30)  # released for the next session
        finally:
            await server.crash()


async def test_a_decentralised_session_is_watched_again_and_completes(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        server = await fed.server()
        await wait_for(fed.all_online, deadline_s=30)
        sid = await server.manager.start(fed.request("decentralised"))
        await fed.rounds_done(sid, 1)
        await server.crash()
        assert len(fed.rounds(sid)) < ROUNDS, "the session ended before the crash; make rounds slower"

        server = await fed.server()
        try:
            status, reason = await fed.ended(sid)
            assert status == "COMPLETED", reason
            assert reason.startswith(f"completed all {ROUNDS} rounds among 3 peers"), reason
            rounds = fed.rounds(sid)
            # every round recorded once, those run while no server watched included
            assert [r for r, _ in rounds] == list(range(1, ROUNDS + 1))
            assert all(m["digest_agreement"] == 1.0 and m["peers"] == 3 for _, m in rounds)
            assert all(not t.done() for t in fed.agents.values())
        finally:
            await server.crash()


async def test_a_decentralised_session_whose_peers_are_all_gone_fails_saying_why(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        server = await fed.server()
        await wait_for(fed.all_online, deadline_s=30)
        sid = await server.manager.start(fed.request("decentralised"))
        await fed.rounds_done(sid, 1)
        await server.crash()
        await fed.stop_agents()  # the sites restarted too: their peers, and the model, are gone
        recorded = max(r for r, _ in fed.rounds(sid))
        fed.start_agents()

        server = await fed.server()
        try:
            status, reason = await fed.ended(sid, deadline_s=60)
            assert status == "FAILED"
            assert reason.startswith(f"the server restarted after round {recorded} and no peer went on"), reason
            assert "held by its peers only" in reason and "site-1 runs no peer of session" in reason, reason
            await wait_for(fed.all_online, deadline_s=30)
        finally:
            await server.crash()
