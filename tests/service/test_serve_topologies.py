"""Every topology from the platform's session manager, in one process on the in-memory network:
three long-lived site agents (``Agent.serve_on``, the code ``fedhive agent`` runs) take part in a
star, a hierarchical (two combiners the manager runs) and a decentralised session, one after
another, with no agent restarted; a combiner stopped mid-session, or a peer that dies, does not
hang its session. The same over RabbitMQ with real processes: ``test_serve_topologies_amqp``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from platform_user_app import NAME, write_app

from fedhive.app.loader import load_app
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
from fedhive.service.session_manager import SessionManager, SessionObserver
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.models import ClientStatus
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.transports.memory import MemoryNetwork
from service.test_platform_flow import wait_for

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2", "site-3"]


@dataclass
class Federation:
    db: Database
    manager: SessionManager
    owner: int
    agents: dict[str, asyncio.Task[None]]

    def request(self, topology: str, *, rounds: int = 3, combiners: int = 0, sleep_s: float = 0.0) -> SessionRequest:
        config = make_config(
            rounds=rounds, epochs=2, lr=0.1, min_clients=3, heartbeat_interval_s=0.25, heartbeat_timeout_s=6.0,
            round_timeout_s=20.0, registration_timeout_s=30.0, run_config={"sleep_s": sleep_s}, app=NAME,
        )  # fmt: skip
        return SessionRequest(str(self.owner), config, 3, topology=topology, combiners=combiners)

    async def ended(self, sid: str, deadline_s: float = 90.0) -> tuple[str, str | None]:
        def status() -> tuple[str, str | None] | None:
            with self.db.session(read_only=True) as s:
                row = sessions_repo.session_by_id(s, sid)
                assert row is not None
                ended = row.status.value in ("COMPLETED", "FAILED", "CANCELLED")
                return (row.status.value, row.reason) if ended else None

        async def check() -> tuple[str, str | None] | None:
            return await asyncio.to_thread(status)

        result: tuple[str, str | None] = await wait_for(check, deadline_s=deadline_s)
        return result

    async def all_online(self) -> bool:
        def online() -> bool:
            with self.db.session(read_only=True) as s:
                return len(users_repo.list_clients(s, None, status=ClientStatus.ONLINE)) == len(SITES)

        return await asyncio.to_thread(online)

    def rounds(self, sid: str) -> list[dict[str, object]]:
        with self.db.session(read_only=True) as s:
            return [dict(r.metrics) for r in sessions_repo.list_rounds(s, sid)]

    def results(self, sid: str) -> list[tuple[int, str, str | None]]:
        with self.db.session(read_only=True) as s:
            return [(r.round, r.client_id, r.via) for r in sessions_repo.client_results(s, sid)]


@contextlib.asynccontextmanager
async def federation(tmp_path: Path, observers: Sequence[SessionObserver] = ()) -> AsyncIterator[Federation]:
    folder = write_app(tmp_path / "apps")
    db = Database(tmp_path / "fedhive.db")
    db.upgrade()
    box = SecretBox(new_key_text(), origin="test")
    keys = {}
    with db.session() as s:
        owner = users_repo.create_user(s, "ada@example.org", "not-a-real-hash").id
        for site in SITES:
            keys[site] = users_repo.create_client(s, site, box=box, client_id=site)[1].encode()
    network = MemoryNetwork()
    hub_transport = network.connect(COORDINATOR_ID)
    await hub_transport.start()
    hub = Hub(hub_transport, heartbeat_timeout_s=6.0)
    PeerStatusRecorder(db).attach(hub.bus)
    nodes = ServiceNodes(keys.get, network=network)
    apps = InstalledApps.load([str(folder)])
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    manager = SessionManager(db, artifacts, hub, apps=apps, nodes=nodes, observers=observers)
    loaded = load_app(str(folder))
    settings = AgentSettings(heartbeat_interval_s=0.25, coordinator_timeout_s=10.0)

    async def run_agent(i: int, site: str) -> None:
        node = {"partition_id": i, "num_partitions": len(SITES)}
        app = SiteApp(loaded, site, node, state_dir=tmp_path / "state" / site)
        agent = Agent(
            keys[site], AgentSites(site, {NAME: app}), BrokerSettings("amqp://unused"), settings,
            peer_link=lambda peer_id, _key: network.connect(peer_id),
        )  # fmt: skip
        async with network.connect(site) as transport:
            await agent.serve_on(transport)

    hub_task = asyncio.create_task(hub.run())
    agents = {site: asyncio.create_task(run_agent(i, site), name=site) for i, site in enumerate(SITES)}
    fed = Federation(db, manager, owner, agents)
    try:
        await wait_for(fed.all_online, deadline_s=30)
        yield fed
    finally:
        await manager.close()
        for task in agents.values():
            task.cancel()
        hub.stop()
        await asyncio.gather(hub_task, *agents.values(), return_exceptions=True)
        await hub_transport.close()
        db.dispose()


async def test_the_same_agents_take_part_in_a_star_a_hierarchical_and_a_decentralised_session(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        star = await fed.manager.start(fed.request("star"))
        assert await fed.ended(star) == ("COMPLETED", "completed all 3 rounds")
        await wait_for(fed.all_online, deadline_s=30)

        hier = await fed.manager.start(fed.request("hierarchical", combiners=2))
        status, reason = await fed.ended(hier)
        assert status == "COMPLETED", reason
        rows = fed.results(hier)
        behind = {via: sorted({c for _, c, v in rows if v == via}) for _, _, via in rows if via}
        combiners = [f"combiner-{hier}-1", f"combiner-{hier}-2"]
        assert sorted(behind) == combiners  # every site behind one combiner, both combiners used
        assert sorted(c for clients in behind.values() for c in clients) == SITES
        assert len(fed.rounds(hier)) == 3
        await wait_for(fed.all_online, deadline_s=30)

        peers = await fed.manager.start(fed.request("decentralised"))
        status, reason = await fed.ended(peers)
        assert status == "COMPLETED", reason
        assert reason is not None and reason.startswith("completed all 3 rounds among 3 peers")
        rounds = fed.rounds(peers)
        assert [r["digest_agreement"] for r in rounds] == [1.0, 1.0, 1.0]
        assert all(r["peers"] == 3 for r in rounds)
        assert rounds[-1]["mse"] < rounds[0]["mse"]  # type: ignore[operator]
        assert sorted({c for _, c, _ in fed.results(peers)}) == SITES
        await wait_for(fed.all_online, deadline_s=30)
        assert all(not task.done() for task in fed.agents.values())  # no agent restarted


async def test_a_stopped_combiner_does_not_hang_its_session(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        sid = await fed.manager.start(fed.request("hierarchical", rounds=6, combiners=2, sleep_s=0.3))

        async def first_round() -> bool:
            return bool(await asyncio.to_thread(fed.rounds, sid))

        await wait_for(first_round, deadline_s=60)
        session = fed.manager.hierarchical(sid)
        assert session is not None
        session.stop_combiner(f"combiner-{sid}-1")
        status, reason = await fed.ended(sid, deadline_s=90)
        # its sites moved to the other combiner: the session goes on to its end
        assert status == "COMPLETED", reason
        late = [c for rnd, c, via in fed.results(sid) if rnd == 6 and via]
        assert sorted(late) == SITES, fed.results(sid)


async def test_a_dead_peer_does_not_hang_a_decentralised_session(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        sid = await fed.manager.start(fed.request("decentralised", rounds=6, sleep_s=0.3))

        async def first_round() -> bool:
            return bool(await asyncio.to_thread(fed.rounds, sid))

        await wait_for(first_round, deadline_s=60)
        fed.agents["site-3"].cancel()  # gone without a word, as a killed process
        status, reason = await fed.ended(sid, deadline_s=90)
        assert status == "COMPLETED", reason
        assert reason is not None and "among 2 peers" in reason
        assert fed.rounds(sid)[-1]["peers"] == 2
