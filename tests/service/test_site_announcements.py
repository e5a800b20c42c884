"""What a site agent announces reaches the platform's sites listing: an agent node (as ``fedhive
agent`` runs it) registers with the hub and beats while idle; the hub passes its announcement on
once, and again only when it changes, and the status recorder stores it, cut to a bounded plain
form, for ``GET /sites`` and the dashboard's sites page."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from fedhive.api.sites import SiteOut
from fedhive.app.learner import Trainer
from fedhive.runtime import events as ev
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import Hub
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.peer_status import PeerStatusRecorder
from fedhive.service.sites import MAX_ITEMS, site_record
from fedhive.storage import users_repo
from fedhive.storage.database import Database
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.transports.memory import MemoryNetwork


def no_training(_: SessionConfig) -> Trainer:
    raise AssertionError("no session in this test")


class HubEvents:
    """Set by every hub event the test watches, after the status recorder's own handler (attached
    first) has written it: a check is made again only when something has happened."""

    def __init__(self) -> None:
        self.happened = asyncio.Event()

    def note(self, _: object) -> None:
        self.happened.set()

    async def until(self, check: Callable[[], bool], deadline_s: float = 30.0) -> None:
        async with asyncio.timeout(deadline_s):
            while not check():
                self.happened.clear()
                await self.happened.wait()


def site_of(db: Database, client_id: str) -> SiteOut:
    with db.session(read_only=True) as s:
        row = users_repo.get_client(s, client_id)
        assert row is not None
        return SiteOut.from_site_row(row)


async def test_an_idle_agents_announcement_is_stored_once_and_again_when_it_changes(tmp_path: Path) -> None:
    db = Database(tmp_path / "fedhive.db")
    db.upgrade()
    with db.session() as s:
        users_repo.create_client(s, "Hospital A", box=SecretBox(new_key_text(), origin="test"), client_id="hospital-a")
    network = MemoryNetwork()
    announced: list[ev.SiteAnnounced] = []
    first: dict[str, object] = {
        "agent": "0.1.0",
        "apps": {"builtin": "0123456789ab", "xray": "ba9876543210"},
        "datasets": ["scans-2024"],
    }
    async with contextlib.AsyncExitStack() as stack:
        hub = Hub(await stack.enter_async_context(network.connect(COORDINATOR_ID)), heartbeat_timeout_s=None)
        PeerStatusRecorder(db).attach(hub.bus)
        hub.bus.on(ev.SiteAnnounced, announced.append)
        beats: list[ev.HeartbeatReceived] = []
        hub.bus.on(ev.HeartbeatReceived, beats.append)
        events = HubEvents()
        for kind in (ev.HeartbeatReceived, ev.SiteAnnounced, ev.ClientStatusChanged):
            hub.bus.on(kind, events.note)
        until = events.until
        hub_task = asyncio.create_task(hub.run())
        stack.push_async_callback(lambda: asyncio.wait_for(hub_task, 30))
        stack.callback(hub.stop)

        async def agent(announce: dict[str, object]) -> tuple[ClientNode, asyncio.Task[None]]:
            node = ClientNode(
                "hospital-a",
                await stack.enter_async_context(network.connect("hospital-a")),
                no_training,
                num_examples=120,
                heartbeat_interval_s=0.05,
                agent=True,
                announce=announce,
            )
            return node, asyncio.create_task(node.run())

        node, task = await agent(first)
        await until(lambda: (site_of(db, "hospital-a").agent, site_of(db, "hospital-a").status) == ("0.1.0", "ONLINE"))
        site = site_of(db, "hospital-a")
        assert (site.apps, site.datasets, site.status) == (first["apps"], ["scans-2024"], "ONLINE")
        assert site.num_examples == 120
        seen = len(beats)
        await until(lambda: len(beats) >= seen + 10)  # ten more idle beats, each carrying the same announcement
        assert len(announced) == 1

        # The agent restarts with another app installed: the new announcement replaces the old.
        node.leave("restarting")
        await asyncio.wait_for(task, 30)
        changed: dict[str, object] = {
            **first,
            "apps": {"builtin": "0123456789ab"},
            "datasets": ["scans-2024", "scans-2025"],
        }
        _, task = await agent(changed)
        await until(lambda: site_of(db, "hospital-a").datasets == ["scans-2024", "scans-2025"])
        assert site_of(db, "hospital-a").apps == {"builtin": "0123456789ab"}
        assert len(announced) == 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    db.dispose()


def test_an_announcement_is_stored_bounded_and_plain() -> None:
    raw = {
        "agent": "1.0\x00\n-evil",
        "apps": {f"app-{i}": "d" * 100 for i in range(200)} | {"\x07": "x"},
        "datasets": ["ok", 7, None, "bad\x1b[31m", "\ud800lone", *[f"set-{i}" for i in range(200)]],
        "extra": {"nested": "ignored"},
    }
    record = site_record(raw)
    assert set(record) == {"agent", "apps", "datasets"}
    assert record["agent"] == "1.0-evil"
    assert len(record["apps"]) == MAX_ITEMS and all(len(d) == 64 for d in record["apps"].values())
    assert record["datasets"][:4] == ["ok", "7", "bad[31m", "?lone"]
    assert len(record["datasets"]) <= MAX_ITEMS
    assert site_record({"apps": ["not", "a", "mapping"], "datasets": "nor a list"}) == {
        "agent": None,
        "apps": {},
        "datasets": [],
    }
