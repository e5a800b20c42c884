"""The platform in one process: REST API + hub + session manager (+ optional local peers).

``fedhive serve`` runs this on the embedded defaults (SQLite, local artifacts, in-memory
transport); URLs move each part out (``--db postgresql://``, ``--artifacts s3://``,
``--broker amqp://``) without code changes. Local peers are ordinary client nodes in this process,
for trying the platform without starting peer processes.

Sessions run the apps installed with ``--app`` (and ``builtin``), loaded once at start-up: an app
that does not load stops the server before it listens. A local peer runs a session's app through
``SiteApp``, as a remote site does: a builtin session on the platform's data plan
(``PlatformDataApp``), any other app with ``ctx.node = {"partition_id": i, "num_partitions": n}``
(``i``: the peer's place in the session's sorted peer list) and its ``ctx.state`` kept under
``home/state/<peer>/<app>``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn

from fedhive.api.app import create_app
from fedhive.app.learner import Trainer
from fedhive.app.loader import BUILTIN
from fedhive.core.signing import SenderClocks, Verifier
from fedhive.errors import DataError
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import Hub
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp
from fedhive.service.apps import InstalledApps, state_folder_name
from fedhive.service.clock_file import ClockFile
from fedhive.service.peer_status import PeerStatusRecorder, SecretCache
from fedhive.service.platform_data_app import PlatformDataApp, platform_builtin
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.services import Services, open_stores
from fedhive.service.session_manager import SessionManager, SessionObserver
from fedhive.service.settings import Settings
from fedhive.service.site_logins import SiteLogins
from fedhive.storage import users_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.secret_box import SecretBox
from fedhive.tracking.mlflow_options import session_observer
from fedhive.transports.base import Transport
from fedhive.transports.broker_users import SenderLogins
from fedhive.transports.memory import MemoryNetwork
from fedhive.transports.wire_codec import WireCodec
from fedhive.web.live import LiveFeed

log = logging.getLogger("fedhive.platform")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    local_clients: int = 0


async def serve(settings: Settings, options: ServeOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until cancelled (Ctrl-C). ``on_ready`` gets the API's base URL once it listens."""
    apps = await asyncio.to_thread(InstalledApps.load, settings.apps)  # AppError: nothing started yet
    db, artifacts = await asyncio.to_thread(open_stores, settings)
    async with AsyncExitStack() as stack:
        stack.callback(db.dispose)
        network = MemoryNetwork() if settings.broker_url is None else None
        clock_file = ClockFile(settings.home / "sender-clocks.json")
        clocks = await asyncio.to_thread(clock_file.load)
        nodes = _service_nodes(settings, db, artifacts, network)  # a hierarchical session's combiners
        site_logins = SiteLogins(db)  # sites with broker users of their own: the hub makes their queues
        await asyncio.to_thread(site_logins.load)
        logins = SenderLogins(site_logins, site_logins.combiners)  # remote combiners relay their sites' messages
        hub_link = _hub_transport(settings, nodes, artifacts, network, clocks, logins=logins)
        transport = await stack.enter_async_context(hub_link)
        hub = Hub(transport, heartbeat_timeout_s=settings.heartbeat_timeout_s)
        PeerStatusRecorder(db).attach(hub.bus)
        live = LiveFeed()  # the dashboard's server-sent events: peer facts from the hub, rounds per session
        live.attach_hub(hub.bus)
        observers: list[SessionObserver] = [live.attach_session]
        if settings.mlflow_tracking_uri is not None:  # every session tracked (and its model registered)
            uri, name, per_round = (
                settings.mlflow_tracking_uri,
                settings.mlflow_register_as,
                settings.mlflow_run_per_round,
            )
            observers.append(
                await asyncio.to_thread(lambda: session_observer(uri, register_as=name, run_per_round=per_round))
            )
        manager = SessionManager(db, artifacts, hub, observers=observers, apps=apps, nodes=nodes)
        app = create_app(settings, Services(settings, db, artifacts, manager, apps), live)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        # Binding the socket before serving is the readiness signal: from here on, connections
        # wait in the listen backlog until uvicorn accepts them.
        sock = socket.create_server((options.host, options.port), reuse_port=False)
        stack.callback(sock.close)
        await asyncio.to_thread(_mark_all_offline, db)  # statuses from a previous run are stale
        peers = await asyncio.to_thread(_local_peer_ids, db, settings.secret_box(), options.local_clients)
        async with asyncio.TaskGroup() as tg:
            hub_task = tg.create_task(hub.run(), name="hub")
            keeping = tg.create_task(clock_file.keep(clocks), name="sender-clocks") if network is None else None
            sites = LocalSites(apps, artifacts, settings.home)
            peer_tasks = [
                tg.create_task(_run_local_peer(p, network, settings, db, artifacts, sites), name=p) for p in peers
            ]
            resumed = await manager.resume_running()
            if resumed:
                log.warning("resumed %d running session(s): %s", len(resumed), ", ".join(resumed))
            api = tg.create_task(server.serve(sockets=[sock]), name="api")
            if on_ready is not None:
                on_ready(f"http://{options.host}:{sock.getsockname()[1]}")
            await api  # ends on SIGINT/SIGTERM (uvicorn's own handlers)
            await manager.close()
            hub.stop()
            await hub_task
            if keeping is not None:
                keeping.cancel()  # saves the leads once more
            for task in peer_tasks:
                task.cancel()


def _mark_all_offline(db: Database) -> None:
    with db.session() as s:
        users_repo.mark_silent_clients_offline(s, datetime.now(UTC) + timedelta(days=1))


def _service_nodes(
    settings: Settings, db: Database, artifacts: ArtifactStore, network: MemoryNetwork | None
) -> ServiceNodes:
    sites = SecretCache(db, settings.secret_box())
    if network is not None:
        return ServiceNodes(sites, network=network)
    assert settings.broker_url is not None
    return ServiceNodes(sites, broker=BrokerSettings(settings.broker_url, settings.namespace, artifacts=artifacts))


def _hub_transport(
    settings: Settings,
    nodes: ServiceNodes,
    artifacts: ArtifactStore,
    network: MemoryNetwork | None,
    clocks: SenderClocks,
    *,
    logins: SenderLogins | None = None,
) -> Transport:
    if network is not None:
        return network.connect(COORDINATOR_ID)
    codec = hub_codec(nodes.secret_of, artifacts, clocks)  # the sites' secrets, and our combiners' keys
    assert settings.broker_url is not None
    broker = BrokerSettings(settings.broker_url, settings.namespace, artifacts=artifacts)
    return broker.transport(COORDINATOR_ID, codec, logins=logins)


def hub_codec(secret_of: Callable[[str], bytes | None], artifacts: ArtifactStore, clocks: SenderClocks) -> WireCodec:
    """The hub's codec (see ``runtime.networked.coordinator_codec``). With ``clocks`` (kept by
    ``service.clock_file``) nothing signed before this process started is accepted, so frames
    captured before a restart cannot be replayed after it."""
    return WireCodec(
        secret_of, Verifier(secret_of, clocks=clocks), artifacts, defer_references=True, grants_uploads=True
    )


def _local_peer_ids(db: Database, box: SecretBox, count: int) -> list[str]:
    """Credentials for ``count`` local peers (created once, reused on restart)."""
    ids = [f"local-{i + 1}" for i in range(count)]
    with db.session() as s:
        for peer in ids:
            if users_repo.get_client(s, peer) is None:
                users_repo.create_client(s, peer, box=box, client_id=peer)
    return ids


class LocalSites:
    """What the local peers of this process run: the installed apps, each peer as its own site."""

    def __init__(self, apps: InstalledApps, artifacts: ArtifactStore, home: Path) -> None:
        self.apps = apps
        self.home = home
        # One instance for every local peer: it keeps one trainer (the peer's shard) per peer.
        self.builtin = platform_builtin(apps.builtin, PlatformDataApp(artifacts))

    def site(self, peer: str, config: SessionConfig) -> SiteApp:
        """The peer's site for a session: the session's app, this peer's settings and state."""
        if config.app == BUILTIN:
            return SiteApp(self.builtin, peer)
        loaded = self.apps.named(config.app)
        peers = [str(p) for p in config.data.get("peers", [])]
        if peer not in peers:
            raise DataError(f"session {config.session_id} lists no partition for peer {peer!r}")
        node = {"partition_id": peers.index(peer), "num_partitions": len(peers)}
        state_dir = self.home / "state" / state_folder_name(peer) / state_folder_name(loaded.name)
        return SiteApp(loaded, peer, node, state_dir=state_dir)

    def trainer_for(self, peer: str) -> Callable[[SessionConfig], Trainer]:
        """The peer's ``ClientNode`` trainer factory (``SiteApp`` refuses another app's session)."""
        return lambda config: self.site(peer, config).trainer_for(config)


async def _run_local_peer(
    peer: str,
    network: MemoryNetwork | None,
    settings: Settings,
    db: Database,
    artifacts: ArtifactStore,
    sites: LocalSites,
) -> None:
    if network is not None:
        transport: Transport = network.connect(peer)
    else:
        assert settings.broker_url is not None
        with db.session(read_only=True) as s:
            key = users_repo.get_client_secret(s, peer, settings.secret_box())
        assert key is not None

        def coordinator_only(sender: str) -> bytes | None:
            return key if sender == COORDINATOR_ID else None

        codec = WireCodec(lambda _to: key, Verifier(coordinator_only), artifacts)
        transport = BrokerSettings(settings.broker_url, settings.namespace, artifacts=artifacts).transport(peer, codec)
    async with transport:
        node = ClientNode(
            peer,
            transport,
            sites.trainer_for(peer),
            num_examples=0,
            persistent=True,
            heartbeat_interval_s=max(1.0, settings.heartbeat_timeout_s / 4),
        )
        await node.run()
