"""Starts, cancels and resumes sessions on the hub: the platform's ``SessionLauncher``.

Starting is one transaction (session row + peers locked TRAINING, or nothing at all), then the
data plan, then a ``Coordinator`` on a hub port with the persistence observer attached. A
coordinator process that was killed and started again calls ``resume_running``: every RUNNING
session continues from its last checkpoint with the peers it held, so no round is skipped or run
twice.

The coordinator's side of a session goes through the app API (``ServerApp``): the initial model
from the app's ``init``, the evaluation after each round from its ``central_evaluate``. A builtin
session keeps the platform's data plan (an uploaded CSV's shards, a built-in data set's parts) and
evaluates on its held-out split (``PlatformDataApp``); any other installed app reads its own data
at each site, and the session's ``data`` only lists its peers (``{"peers": [...]}``, sorted: a
local peer's ``partition_id`` is its place in that list).

Observers (the dashboard's live feed, an MLflow tracker) are attached to each session's bus with
the session's tags (``SessionRequest.tags``: its use case, the registered model it started from).
A cancelled session's coordinator is stopped mid-round, so it never says how the session ended:
the manager says it for it, dispatching ``SessionCancelled`` on that bus once the database holds
CANCELLED (the live feed then shows it, a tracker ends its runs KILLED).

A session's topology (``SessionRequest.topology``, kept in its config's ``data``) picks what runs
it: a ``Coordinator`` over the sites (star), a ``HierarchicalSession`` (combiners this process
runs, the sites behind them) or a ``PeerSession`` (the sites train among themselves; the server
only watches). docs/architecture.md, "Sessions of every topology". After a restart a hierarchical
session resumes as a star does, from its last checkpoint, with combiners started again under new
ids (the sites, still following the old ones, are each assigned one of them); a decentralised one
is watched again (``PeerSession``, ``resumed``): its peers never needed the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from fedhive.app.loader import BUILTIN, LoadedApp
from fedhive.core import codec
from fedhive.core.bodies import StopBody
from fedhive.core.envelope import Kind, make
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import ConfigError, FedhiveError, PayloadError, SessionFailed
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.models import parse_model_spec
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.hub import DECENTRALISED, HIERARCHICAL, STAR, Hub
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.runtime.resume import Checkpoint, coordinator_kwargs
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import ServerApp, session_with_app
from fedhive.service.apps import InstalledApps
from fedhive.service.hierarchical_sessions import HierarchicalSession
from fedhive.service.launcher import NotEnoughPeers, SessionRequest
from fedhive.service.peer_sessions import PeerSession
from fedhive.service.persistence import SessionRecorder, load_checkpoint
from fedhive.service.platform_data_app import PlatformDataApp, platform_builtin
from fedhive.service.reported_sessions import is_reported
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.shards import DataPlan, plan_builtin, plan_uploaded_csv
from fedhive.service.topology import topology_data
from fedhive.storage import models_repo, sessions_repo, users_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database, NotFound
from fedhive.storage.models import ClientRow, ClientStatus, SessionStatus
from fedhive.strategies.registry import parse_strategy

log = logging.getLogger("fedhive.sessions")
_MAX_MODEL_BYTES = 1 << 33
CANCELLED_REASON = "cancelled by its owner"
# How long closing the manager waits for observers still recording a cancellation (a tracker's
# call to a slow MLflow server): they are told the news, not waited on for ever.
_ENDING_WAIT_S = 10.0
# What is attached to each session's bus: (session id, bus, the session's tags).
SessionObserver = Callable[[str, EventBus, Mapping[str, str]], None]


class SessionManager:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        hub: Hub,
        *,
        observers: Sequence[SessionObserver] = (),
        apps: InstalledApps | None = None,
        nodes: ServiceNodes | None = None,
    ) -> None:
        self.db = db
        self.nodes = nodes  # what hierarchical and decentralised sessions need (None: star sessions only)
        self.apps = apps if apps is not None else InstalledApps.load()
        # Extra observers (the dashboard's live feed, a tracker): called with (session id, bus,
        # tags) for every session started or resumed, after the persistence observer.
        self._observers = list(observers)
        self.artifacts = artifacts
        self.hub = hub
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._buses: dict[str, EventBus] = {}  # running sessions' buses: where a cancellation is told
        self._ending: set[asyncio.Task[None]] = set()  # cancellations still being told to observers
        self._hierarchies: dict[str, HierarchicalSession] = {}  # running hierarchical sessions

    # -- SessionLauncher ---------------------------------------------------------------------
    async def start(self, request: SessionRequest) -> str:
        # The session names its app and the digest of its code (ConfigError before anything is written).
        config = session_with_app(request.config, self.apps.named(request.config.app))
        if config.app == BUILTIN:
            parse_model_spec(config.model)
        elif request.dataset_id is not None or request.initial_model is not None:
            # Weights of its own (initial_params) it may start from: they are checked against its init's.
            raise ConfigError(f"app {config.app!r} reads its own data at each site: no data set or model spec applies")
        parse_strategy(config.strategy)
        topology = topology_data(request, runs_nodes=self.nodes is not None)
        request = dataclasses.replace(request, config=config)
        peers = await asyncio.to_thread(self._create_and_claim, request)
        try:
            if len(peers) < max(request.combiners, 2 if request.topology == DECENTRALISED else 1):
                raise ConfigError(f"a {request.topology} session needs more sites than the {len(peers)} claimed")
            plan = await asyncio.to_thread(self._plan, config, peers, request.dataset_id, request.owner_id)
            data = {**plan.data, **topology}
            if request.remote_combiners is not None:  # claimed with the sites (_create_and_claim)
                remote = await asyncio.to_thread(self._combiners_of, config.session_id)
                data.update(combiners=len(remote), remote_combiners=remote)
            if request.topology == DECENTRALISED:  # kept: a restarted server watches the same peers
                data["peer_ids"] = {p: new_peer_id() for p in sorted(peers)}
            config = config.model_copy(update={"data": data, "min_clients": min(request.min_peers, len(peers))})
            if request.topology == DECENTRALISED:  # the peers make the seed model themselves
                initial = Params({})
            else:
                initial = await asyncio.to_thread(self._initial_params, request, config, plan)
            await asyncio.to_thread(self._store_config, config)
        except FedhiveError:
            # The caller gets the error; no half-created session stays behind, peers go free.
            await asyncio.to_thread(self._discard, config.session_id, int(request.owner_id))
            raise
        tags = dict(request.tags)
        self._launch(config, peers, plan, initial, owner_id=int(request.owner_id), checkpoint=None, tags=tags)
        return config.session_id

    async def cancel(self, session_id: str) -> bool:
        task = self._tasks.pop(session_id, None)
        bus = self._buses.pop(session_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        peers = await asyncio.to_thread(self._peers_of, session_id)
        peers += await asyncio.to_thread(self._combiners_of, session_id)  # remote ones go idle at once
        cancelled = StopBody.model_construct(reason="cancelled").to_body()
        stop = make(Kind.STOP, COORDINATOR_ID, session_id=session_id, body=cancelled)
        await self.hub.transport.send_many([(p, stop) for p in peers])
        self.hub.release(session_id)

        def write() -> bool:
            with self.db.session() as s:
                changed = sessions_repo.set_session_status(
                    s, session_id, SessionStatus.CANCELLED, reason=CANCELLED_REASON
                )
                users_repo.release_clients(s, session_id)
                return changed

        changed = await asyncio.to_thread(write)
        if changed and bus is not None:
            # In a task of its own: the caller (an API request) is answered now, whatever a
            # tracker's server takes to hear that the session ended.
            told = asyncio.create_task(
                bus.dispatch(ev.SessionCancelled(session_id, CANCELLED_REASON)), name=f"cancelled-{session_id}"
            )
            self._ending.add(told)
            told.add_done_callback(self._told)
        return changed

    def hierarchical(self, session_id: str) -> HierarchicalSession | None:
        """The running hierarchical session (its combiners), if it is one."""
        return self._hierarchies.get(session_id)

    def _told(self, task: asyncio.Task[None]) -> None:
        self._ending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an observer failed on a cancellation: %s", task.exception())

    # -- crash resume ---------------------------------------------------------------------------
    async def resume_running(self) -> list[str]:
        """Continue every RUNNING (or PENDING) session from its last checkpoint."""
        resumed = []
        for row_id, owner_id, raw in await asyncio.to_thread(self._unfinished):
            topology = (raw.get("data") or {}).get("topology", STAR)
            if topology != STAR and self.nodes is None:
                why = f"cannot resume: this server runs no {topology} sessions"
                await asyncio.to_thread(self._fail_now, row_id, why)
                continue
            try:
                config = await asyncio.to_thread(self._resumable, SessionConfig.model_validate(raw))
                peers = await asyncio.to_thread(self._peers_of, row_id)
                plan = await asyncio.to_thread(self._replan, config, peers)
                if topology == DECENTRALISED:  # the model is the peers' own: nothing to load
                    ckpt, initial = None, Params({})
                else:
                    ckpt = await asyncio.to_thread(load_checkpoint, self.db, self.artifacts, row_id)
                    initial = ckpt.params if ckpt else await asyncio.to_thread(self._fresh_params, config, plan)
            except (FedhiveError, ValidationError) as exc:
                await asyncio.to_thread(self._fail_now, row_id, f"cannot resume: {exc}")
                continue
            if topology == DECENTRALISED:
                log.info("resuming decentralised session %s: asking its %d peers how far they are", row_id, len(peers))
            else:
                start_round = ckpt.next_round if ckpt else 1
                log.info("resuming session %s at round %d with %d peers", row_id, start_round, len(peers))
            self._launch(config, peers, plan, initial, owner_id=owner_id, checkpoint=ckpt, resumed=True)
            resumed.append(row_id)
        return resumed

    async def close(self) -> None:
        """Stop running coordinators without touching their sessions' state (they resume later)."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._buses.clear()
        if self._ending:
            _, late = await asyncio.wait(list(self._ending), timeout=_ENDING_WAIT_S)
            for task in late:
                task.cancel()

    @property
    def running(self) -> list[str]:
        return [sid for sid, t in self._tasks.items() if not t.done()]

    # -- running ------------------------------------------------------------------------------
    def _launch(
        self,
        config: SessionConfig,
        peers: list[str],
        plan: DataPlan,
        initial: Params,
        *,
        owner_id: int | None,
        checkpoint: Checkpoint | None,
        tags: Mapping[str, str] | None = None,
        resumed: bool = False,
    ) -> None:
        sid, topology = config.session_id, config.data.get("topology", STAR)
        if topology == DECENTRALISED:
            assert self.nodes is not None
            timeout = self.hub.heartbeat_timeout_s or 20.0
            watcher = PeerSession(
                self.db, self.hub, config, peers, site_secret=self.nodes.site_secret, heartbeat_timeout_s=timeout,
                resumed=resumed,
            )  # fmt: skip
            # No recorder (the watcher writes what the peers report), but the same observers: the
            # facts it records come on a bus of its own (``peer_session_facts``).
            for attach in self._observers:
                attach(sid, watcher.facts.bus, dict(tags or {}))
            self._buses[sid] = watcher.facts.bus
            self._tasks[sid] = asyncio.create_task(self._run(sid, watcher.run()), name=f"session-{sid}")
            return
        evaluator = self._server_app(config, plan).evaluator()
        kwargs = coordinator_kwargs(config, checkpoint)
        if topology == HIERARCHICAL:
            assert self.nodes is not None
            combiners = int(config.data["combiners"])
            remote = [str(c) for c in config.data.get("remote_combiners") or ()]
            session = HierarchicalSession(
                config, self.hub, peers, initial, nodes=self.nodes, combiners=combiners, evaluator=evaluator,
                resumed=resumed, remote=remote, **kwargs,
            )  # fmt: skip
            self._hierarchies[sid] = session
            bus, strategy, run = session.bus, session.strategy, session.run()
        else:
            port = self.hub.open_session(sid, peers)
            coordinator = Coordinator(config, port, initial, evaluator=evaluator, **kwargs)
            bus, strategy, run = coordinator.bus, coordinator.strategy, coordinator.run()
        SessionRecorder(
            self.db,
            self.artifacts,
            config.session_id,
            strategy,
            owner_id=owner_id,
            model_name=f"session-{config.session_id}",
            model_spec=config.model if config.app == BUILTIN else f"app:{config.app}",
        ).attach(bus)
        for attach in self._observers:
            attach(sid, bus, dict(tags or {}))
        self._buses[sid] = bus
        self._tasks[sid] = asyncio.create_task(self._run(sid, run), name=f"session-{sid}")

    async def _run(self, sid: str, run: Coroutine[Any, Any, object]) -> None:
        try:
            await run
        except SessionFailed as exc:  # recorded by the SessionRecorder; the platform goes on
            log.warning("session %s failed: %s", sid, exc.reason)
        finally:
            self.hub.release(sid)
            self._tasks.pop(sid, None)
            self._buses.pop(sid, None)
            self._hierarchies.pop(sid, None)

    # -- blocking helpers (run in threads) ------------------------------------------------------
    def _create_and_claim(self, request: SessionRequest) -> list[str]:
        config = request.config
        with self.db.session() as s:
            sessions_repo.create_session(
                s,
                config=config.model_dump(mode="json"),
                rounds_total=config.rounds,
                owner_id=int(request.owner_id),
                dataset_id=request.dataset_id,
                session_id=config.session_id,
                name=request.name,
            )
            peers = users_repo.claim_online_clients(
                s, config.session_id, min_count=request.min_peers, max_count=config.max_clients
            )
            if not peers:
                online = len(users_repo.list_clients(s, None, status=ClientStatus.ONLINE))
                # Raising rolls the whole unit back: no session row is left behind.
                raise NotEnoughPeers(online, request.min_peers)
            if request.remote_combiners is not None:
                try:
                    users_repo.claim_combiners(s, config.session_id, request.remote_combiners)
                except NotFound as exc:
                    raise ConfigError(str(exc)) from None
        return peers

    def _plan(self, config: SessionConfig, peers: list[str], dataset_id: str | None, owner_id: str) -> DataPlan:
        if config.app != BUILTIN:  # the app reads its own data at each site
            return DataPlan({"peers": sorted(peers)}, None)
        if dataset_id is None:
            spec = DataSpec(**{k: v for k, v in config.data.items() if k in DataSpec.model_fields})
            return plan_builtin(spec, peers, config.seed)
        with self.db.session(read_only=True) as s:
            row = models_repo.get_dataset(s, dataset_id, owner_id=int(owner_id))
            if row is None:
                raise ConfigError(f"dataset {dataset_id!r} not found")
            ref, label = row.artifact_ref, row.label_column
        if not label:
            raise ConfigError("the uploaded dataset has no label column named")
        partition = str(config.data.get("partition", "iid"))
        plan = plan_uploaded_csv(self.artifacts, ref, label, partition, peers, config.seed)
        return DataPlan({**plan.data, "csv_ref": ref}, plan.test)

    def _replan(self, config: SessionConfig, peers: list[str]) -> DataPlan:
        data = config.data
        if config.app != BUILTIN:
            return DataPlan({"peers": sorted(data.get("peers", peers))}, None)
        if "csv_ref" in data:  # deterministic: the same split and the same content-addressed shards
            plan = plan_uploaded_csv(
                self.artifacts,
                str(data["csv_ref"]),
                str(data["label"]),
                str(data["partition"]),
                sorted(data["shards"]),
                config.seed,
            )
            return DataPlan(dict(data), plan.test)
        spec = DataSpec(**{k: v for k, v in data.items() if k in DataSpec.model_fields})
        return DataPlan(dict(data), plan_builtin(spec, sorted(data.get("parts", peers)), config.seed).test)

    def _initial_params(self, request: SessionRequest, config: SessionConfig, plan: DataPlan) -> Params:
        if request.initial_params is not None:  # decoded by whoever loaded them; the fit to this session here
            source, given = request.initial_params
            _check_fits(given, self._fresh_params(config, plan).spec, source)
            return given.copy()
        if request.initial_model is None:
            return self._fresh_params(config, plan)
        name, version = request.initial_model
        with self.db.session(read_only=True) as s:
            row = models_repo.get_model_version(s, int(request.owner_id), name, version)
            if row is None:
                raise ConfigError(f"model {name!r} version {version} not found")
            ref = row.artifact_ref
        params = codec.decode(self.artifacts.get(ref), max_bytes=_MAX_MODEL_BYTES, what="registered model")
        _check_fits(params, self._fresh_params(config, plan).spec, f"model {name!r} version {version}")
        return Params({n: a.copy() for n, a in params.items()})

    def _fresh_params(self, config: SessionConfig, plan: DataPlan) -> Params:
        return self._server_app(config, plan).initial_params()

    def _server_app(self, config: SessionConfig, plan: DataPlan) -> ServerApp:
        """The coordinator's side of the session's app: its initial model and central evaluation."""
        loaded: LoadedApp = self.apps.for_session(config)
        if config.app == BUILTIN:
            if plan.test is None:
                raise ConfigError(f"session {config.session_id} has no held-out split to evaluate on")
            loaded = platform_builtin(loaded, PlatformDataApp(held_out=plan.test))
        return ServerApp(loaded, config)

    def _resumable(self, config: SessionConfig) -> SessionConfig:
        """The session's config to resume with: its app still installed with the same code. The
        builtin app is fedhive's own: a platform upgraded between the crash and the restart goes
        on with its new version (its local peers run that one too), named in the stored config."""
        builtin = self.apps.builtin
        if config.app == BUILTIN and config.app_digest and config.app_digest != builtin.digest:
            log.warning(
                "session %s: fedhive's builtin app changed since the session started (code %s, now %s)",
                config.session_id,
                config.app_digest[:12],
                builtin.short_digest,
            )
            config = config.model_copy(update={"app_digest": builtin.digest})
            self._store_config(config)
        self.apps.for_session(config)  # still installed, and the same code (AppError otherwise)
        return config

    def _store_config(self, config: SessionConfig) -> None:
        with self.db.session() as s:
            row = sessions_repo.session_by_id(s, config.session_id)
            if row is not None:
                row.config = config.model_dump(mode="json")

    def _discard(self, session_id: str, owner_id: int) -> None:
        with self.db.session() as s:
            users_repo.release_clients(s, session_id)
            sessions_repo.set_session_status(s, session_id, SessionStatus.CANCELLED, reason="start failed")
            sessions_repo.delete_session(s, session_id, owner_id=owner_id)

    def _fail_now(self, session_id: str, reason: str) -> None:
        with self.db.session() as s:
            sessions_repo.set_session_status(s, session_id, SessionStatus.FAILED, reason=reason[:2000])
            users_repo.release_clients(s, session_id)

    def _peers_of(self, session_id: str, role: str = users_repo.SITE) -> list[str]:
        held = (ClientRow.session_id == session_id) & (ClientRow.role == role)
        with self.db.session(read_only=True) as s:
            return list(s.scalars(sa.select(ClientRow.id).where(held).order_by(ClientRow.id)))

    def _combiners_of(self, session_id: str) -> list[str]:
        """The remote combiners the session holds."""
        return self._peers_of(session_id, users_repo.COMBINER)

    def _unfinished(self) -> list[tuple[str, int | None, dict[str, Any]]]:
        with self.db.session(read_only=True) as s:
            rows = sessions_repo.list_sessions(s, None, status=SessionStatus.RUNNING)
            rows += sessions_repo.list_sessions(s, None, status=SessionStatus.PENDING)
            # A reported session runs elsewhere (``fedhive coordinator --report-to``): not ours to resume.
            return [(r.id, r.owner_id, dict(r.config)) for r in rows if not is_reported(r.config)]


def _check_fits(params: Params, needed: ParamSpec, source: str) -> None:
    """``ConfigError`` (422 on the API) naming the first tensor of ``params`` that differs from the
    session's model in name, shape or dtype, or that holds NaN or Inf."""
    try:
        check_against_spec(params, needed, what=source)
    except PayloadError as exc:
        raise ConfigError(f"{exc} (the session's model)") from None
