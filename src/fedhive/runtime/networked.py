"""A coordinator and its clients as separate processes, talking through RabbitMQ.

The same ``Coordinator`` and ``ClientNode`` as in the in-process simulation, handed an
``AmqpTransport`` whose ``WireCodec`` signs and verifies with the right keys:

- the coordinator checks a message from client X with X's secret (from the ``CredentialStore``)
  and signs what it sends to X with X's secret; a sender the store does not know is rejected;
- a client signs with its own secret and accepts only messages from the coordinator, signed with
  that same secret. Clients never hold each other's secrets, so none can pose as another.

Every node purges its own queue when it starts: what sits there was left by an earlier process
with the same id (a stale REGISTER or STOP of another session) and must not be acted on. A
coordinator restarted after a crash resumes from a ``Checkpoint`` (``resume=``) and takes back the
clients of its session that are still running (``Reintroducing``).

Virtual clients (``fedhive client --virtual N``) share one AMQP connection per process
(``transports.amqp_shared``), each with its own queue and signing key: as ``ClientNode``s
(``run_virtual_clients``), or behind a ``ClientHost`` (``run_client_host``) that the coordinator
sends one TRAIN per round for all its selected clients and that answers with partial sums, while
each client still registers with its own signature (docs/networked.md, "Virtual clients at
scale"). A host whose clients' ids name it (``fedhive clients add --hosted-by``) is one broker
identity: one queue and one broker user for itself and all its clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from fedhive.app.contract import EvalResult
from fedhive.app.learner import Evaluator, FitConfig, FitResult, ProgressFn
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import SenderClocks, Verifier
from fedhive.core.wire import MAX_ENVELOPE_BYTES
from fedhive.errors import ConfigError, FedhiveError, ProtocolError
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.client_host import ClientHost, HostedClient, HostTraining, InProcessTraining
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator, SessionResult
from fedhive.runtime.credentials import CredentialStore
from fedhive.runtime.hosted import host_beat
from fedhive.runtime.resume import Checkpoint, coordinator_kwargs
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.site_app import ServerApp, SiteApp
from fedhive.storage.artifacts import ArtifactStore
from fedhive.strategies.base import Strategy
from fedhive.transports.amqp import AmqpTransport, SenderCheck, SharedLink, Sink
from fedhive.transports.amqp_shared import MuxLink, SharedConnection, start_all
from fedhive.transports.amqp_topology import Role, host_named
from fedhive.transports.base import Transport, TransportWrapper
from fedhive.transports.broker_users import SenderLogins
from fedhive.transports.wire_codec import DEFAULT_CLAIM_CHECK_BYTES, DEFAULT_MAX_MESSAGE_BYTES, WireCodec

log = logging.getLogger("fedhive.coordinator")
Observer = Callable[[EventBus], None]


@dataclass(frozen=True)
class BrokerSettings:
    """Where the nodes meet. One coordinator per namespace: sessions side by side on one broker
    use one namespace each."""

    url: str
    namespace: str = "fedhive"
    ca_file: str | None = None
    artifacts: ArtifactStore | None = None  # where payloads over the claim-check threshold go
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 30.0

    def transport(
        self,
        node_id: str,
        codec: WireCodec,
        *,
        declares: bool = True,
        logins: SenderLogins | None = None,
        ephemeral: bool = False,
        shared: SharedLink | None = None,
        sink: Sink | None = None,
        role: Role | None = None,
        sender_check: SenderCheck | None = None,
        speaks_for: Mapping[str, WireCodec] | None = None,
    ) -> AmqpTransport:
        """``declares``: False for a client (it needs no configure rights on the broker);
        ``logins``: the broker users of the clients this node hears from, checked on every message;
        ``ephemeral``: the node's id is used once (a peer), so its queue goes when it does;
        ``shared``: the process's one connection (virtual clients), ``sink``: a ``MuxLink``'s;
        ``role``: a combiner's or peer's (``amqp_topology.Role``); ``sender_check``: a peer's
        check of every message's login, instead of ``logins``'s; ``speaks_for``: a host's clients'
        codecs (they share its queue and broker user)."""
        return AmqpTransport(
            self.url,
            node_id,
            codec,
            namespace=self.namespace,
            ca_file=self.ca_file,
            connect_timeout_s=self.connect_timeout_s,
            publish_timeout_s=self.publish_timeout_s,
            purge_on_start=True,
            declares=declares,
            downstream=logins.provisioned if logins else None,
            relays=logins.relays if logins else None,
            sender_check=sender_check or logins,
            route_via=logins.host_of if logins else None,
            speaks_for=speaks_for,
            role=role,
            ephemeral=ephemeral,
            shared=shared,
            sink=sink,
        )

    def shared_connection(self, name: str) -> SharedConnection:
        return SharedConnection(self.url, name=name, ca_file=self.ca_file, connect_timeout_s=self.connect_timeout_s)


def coordinator_codec(
    store: CredentialStore,
    *,
    artifacts: ArtifactStore | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    clocks: SenderClocks | None = None,
) -> WireCodec:
    # Deferred claim checks: updates queued in the inbox hold references, not model bytes. With
    # ``clocks`` (always: a checkpoint's, or new ones) nothing signed before this process started
    # is accepted, so frames captured before a restart cannot be replayed after it.
    return WireCodec(
        store.secret_of,
        Verifier(store.secret_of, clocks=clocks if clocks is not None else SenderClocks()),
        artifacts,
        max_message_bytes=max_message_bytes,
        defer_references=True,
        grants_uploads=True,  # S3: clients get presigned URLs, never credentials
    )


def client_codec(client_id: str, key: bytes, *, artifacts: ArtifactStore | None = None) -> WireCodec:
    def coordinator_only(sender: str) -> bytes | None:
        return key if sender == COORDINATOR_ID else None

    return WireCodec(lambda _to: key, Verifier(coordinator_only), artifacts)


# -- coordinator -----------------------------------------------------------------------------------
def plan_coordinator(session: SessionFile, broker: BrokerSettings) -> tuple[Evaluator | None, Params]:
    """The initial model from the app's ``init`` and, if the app has ``central_evaluate``, the
    evaluator of the global model (before connecting, so that app and data errors come first)."""
    server = ServerApp(session.loaded, session.config, session.node)
    initial = session.initial_params or server.initial_params()
    if broker.artifacts is None and initial.spec.nbytes > DEFAULT_CLAIM_CHECK_BYTES:
        raise ConfigError(
            f"the model has {initial.spec.nbytes} bytes, over the {DEFAULT_CLAIM_CHECK_BYTES} bytes a message "
            "carries itself: give an artifact store (--artifacts s3://bucket/prefix) that every node can reach"
        )
    return server.evaluator(), initial


async def run_coordinator(
    session: SessionFile,
    store: CredentialStore,
    broker: BrokerSettings,
    *,
    plan: tuple[Evaluator | None, Params] | None = None,
    observers: Sequence[Observer] = (),
    on_ready: Callable[[], None] | None = None,
    resume: Checkpoint | None = None,
    strategy: Strategy | None = None,
    clocks: SenderClocks | None = None,
) -> SessionResult:
    """Run one session to its end; raises ``SessionFailed`` with a reason when it cannot finish.
    ``plan`` is what ``plan_coordinator`` returns, when the caller built it beforehand. With
    ``resume`` the session continues after the checkpoint's round (``strategy``: the one built for
    it by ``strategy_for``, if an observer needs it too); clients still in the session from before
    the crash are taken back as they are heard from (``Reintroducing``). ``clocks``: the senders'
    clock leads that the checkpoint observer saves (``RunCheckpoint.clocks``); default: the
    checkpoint's."""
    config = session.config
    evaluator, initial = plan or plan_coordinator(session, broker)
    if resume is not None:
        if resume.params.spec != initial.spec:
            raise ConfigError(f"the checkpoint's model does not fit session {config.session_id}'s model")
        if resume.round >= config.rounds:  # stopped after its last round's checkpoint: nothing left to train
            log.info("session %s: all %d rounds are done already", config.session_id, config.rounds)
            return SessionResult(config.session_id, resume.params, resume.round, list(resume.history))
        initial = resume.params
    kwargs = coordinator_kwargs(config, resume, strategy=strategy)
    # Frames may hold one update of up to max_update_bytes plus its envelope; the update's own
    # limit is checked (and the rejection logged against its round) when it is decoded.
    codec = coordinator_codec(
        store,
        artifacts=broker.artifacts,
        max_message_bytes=config.max_update_bytes + MAX_ENVELOPE_BYTES,
        clocks=clocks if clocks is not None else SenderClocks(resume.sender_clocks if resume else None),
    )
    logins = SenderLogins(store.broker_users, store.combiners, store.hosts)
    async with broker.transport(COORDINATOR_ID, codec, logins=logins) as transport:
        link = Reintroducing(transport, config.session_id)
        coordinator = Coordinator(config, link, initial, evaluator=evaluator, **kwargs)
        for attach in observers:
            attach(coordinator.bus)
        if on_ready is not None:
            on_ready()
        return await coordinator.run()


class Reintroducing(TransportWrapper):
    """The coordinator's transport, which takes back clients of this session that it has not heard
    register: they registered with an earlier process of the same coordinator that crashed.

    Such a client does not register again (it is registered, and it keeps going while the
    coordinator is silent for less than its ``coordinator_timeout_s``); it sends heartbeats. Its
    first message for this session (signature checked, like every message) is preceded by a
    REGISTER made for it here, as the platform's hub does for the peers of a resumed session: the
    coordinator counts it ONLINE, enables it again and sends it the current round's TRAIN.

    An idle site agent (``fedhive agent``, between sessions) is reached the same way: its beats
    carry no session and its registration (example count, label counts, what it announces); the
    first one this coordinator hears becomes a REGISTER with that body, and the session enables
    it like any client that registered (docs/networked.md, "Site agents").
    """

    def __init__(self, inner: Transport, session_id: str) -> None:
        super().__init__(inner)
        self._session_id = session_id
        self._known: set[str] = set()
        self._hosts: set[str] = set()  # client hosts: they answer for clients, never are one
        self._held: Message | None = None

    async def recv(self) -> Message:
        if self._held is not None:
            msg, self._held = self._held, None
            return msg
        msg = await self.inner.recv()
        host = _host_named(msg)
        if host is not None:
            self._hosts.add(host)
        if host_beat(msg):  # a host's own beat: ClientMembership asks it to register its clients again
            self._hosts.add(msg.sender)
        if msg.kind is Kind.REGISTER:
            self._known.add(msg.sender)
        elif msg.sender in self._hosts:
            pass  # a host's partial or evaluation: its clients are what registers
        elif msg.sender not in self._known and msg.envelope.session_id == self._session_id:
            self._known.add(msg.sender)
            log.info("%s is in session %s from before a restart; taking it back", msg.sender, self._session_id)
            self._held = msg
            body: dict[str, object] = {"num_examples": 0}
            if host is not None:  # a hosted client's beat names its host: it stays hosted
                body["host"] = host
            return make(Kind.REGISTER, msg.sender, session_id=self._session_id, body=body)
        elif msg.sender not in self._known and _idle_agent_beat(msg):
            self._known.add(msg.sender)
            log.info("%s is an idle site agent; taking it as registered", msg.sender)
            body = {k: msg.envelope.body[k] for k in _REGISTER_KEYS if k in msg.envelope.body}
            return make(Kind.REGISTER, msg.sender, body=body)
        return msg


_REGISTER_KEYS = ("num_examples", "label_counts", "site")


def _host_named(msg: Message) -> str | None:
    """The ``ClientHost`` a hosted client's REGISTER or HEARTBEAT names (signed by the client)."""
    if msg.kind not in (Kind.REGISTER, Kind.HEARTBEAT):
        return None
    host = msg.envelope.body.get("host")
    return host if isinstance(host, str) and host else None


def _idle_agent_beat(msg: Message) -> bool:
    """A heartbeat of a site agent between sessions: no session, and its registration inside,
    announced as an agent's (``site``). A client's ordinary heartbeat never registers it: only a
    REGISTER or an agent's announcement does."""
    body = msg.envelope.body
    return msg.kind is Kind.HEARTBEAT and not msg.envelope.session_id and "site" in body and "num_examples" in body


# -- clients ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientSettings:
    register_timeout_s: float = 120.0
    coordinator_timeout_s: float = 60.0
    heartbeat_interval_s: float = 5.0  # until the coordinator says how often it wants one
    progress_interval_s: float = 1.0  # at most one training-progress report per this long


async def run_client(
    key: bytes,
    site: SiteApp,
    broker: BrokerSettings,
    settings: ClientSettings = ClientSettings(),
    *,
    observers: Sequence[Observer] = (),
    executor: Executor | None = None,
) -> int:
    """Serve one session until STOP with the site's app; returns the number of rounds trained.
    Raises ``SessionFailed`` if the coordinator never answers or falls silent."""
    client_id = site.client_id
    codec = client_codec(client_id, key, artifacts=broker.artifacts)
    async with broker.transport(client_id, codec, declares=False) as transport:
        return await _serve_client(transport, site, settings, observers, executor)


async def run_virtual_clients(
    clients: Sequence[tuple[bytes, SiteApp]],
    broker: BrokerSettings,
    settings: ClientSettings = ClientSettings(),
    *,
    observers: Sequence[Observer] = (),
) -> list[int | FedhiveError]:
    """Host many clients in this process, each a ``ClientNode`` with its own identity, queue and
    signing key, all on one AMQP connection (``amqp_shared``).

    Training runs in one shared worker thread: the event loop stays free for every client's
    heartbeats and for the AMQP connection's own heartbeats, which a blocked loop would miss.
    Returns, per client, the rounds it trained or why it failed.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-virtual-clients")
    shared = broker.shared_connection(f"fedhive {len(clients)} virtual clients")
    try:
        async with shared:
            transports = [
                broker.transport(site.client_id, client_codec(site.client_id, key, artifacts=broker.artifacts),
                                 declares=False, shared=shared)
                for key, site in clients
            ]  # fmt: skip
            await start_all(transports)
            try:
                results = await asyncio.gather(
                    *(
                        _serve_client(t, site, settings, observers, pool)
                        for t, (_, site) in zip(transports, clients, strict=True)
                    ),
                    return_exceptions=True,
                )
            finally:
                await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out: list[int | FedhiveError] = []
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, FedhiveError):
            raise r
        out.append(r)
    return out


async def _serve_client(
    transport: Transport,
    site: SiteApp,
    settings: ClientSettings,
    observers: Sequence[Observer],
    executor: Executor | None,
) -> int:
    node = ClientNode(
        site.client_id,
        transport,
        site.trainer_for,
        num_examples=site.num_examples,
        label_counts=site.label_counts,
        executor=executor,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        register_timeout_s=settings.register_timeout_s,
        coordinator_timeout_s=settings.coordinator_timeout_s,
        progress_interval_s=settings.progress_interval_s,
    )
    for attach in observers:
        attach(node.bus)
    await node.run()
    return node.rounds_trained


# -- a client host ------------------------------------------------------------------------------------
class _NotEnabled:
    """A hosted client's trainer until ENABLE says which session it trains (``ClientHost`` swaps
    in ``SiteApp.trainer_for(config)`` then, through ``trainers_for``)."""

    def initial_params(self, seed: int) -> Params:
        raise ProtocolError("no session enabled yet")

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        raise ProtocolError("TRAIN before ENABLE")

    def evaluate(self, params: Params) -> EvalResult:
        raise ProtocolError("EVALUATE before ENABLE")


async def run_client_host(
    host: tuple[str, bytes],
    clients: Sequence[tuple[bytes, SiteApp]],
    broker: BrokerSettings,
    settings: ClientSettings = ClientSettings(),
    *,
    training: HostTraining | None = None,
    first_index: int = 0,
    on_registered: Callable[[int, int], None] | None = None,
) -> int:
    """Serve one session for ``clients`` behind a ``ClientHost`` with the identity ``host`` (its
    id and secret, from the coordinator's client store): the coordinator sends it one TRAIN per
    round for its selected clients and gets partial sums back, signed by the host; every client
    registers and beats with its own signature. All on one AMQP connection, one queue per id.

    ``training``: where the clients train (default: one worker thread, so that the event loop
    keeps every heartbeat on time); ``first_index``: the position of the first client in the whole
    population (a worker process's ``partition_id``). Returns the number of rounds trained;
    raises ``SessionFailed`` if the coordinator never answers or falls silent."""
    host_id, host_key = host
    keys = {host_id: host_key, **{site.client_id: key for key, site in clients}}
    sites = {site.client_id: site for _, site in clients}
    if len(keys) != len(clients) + 1:
        raise ConfigError(f"the host {host_id} and its {len(clients)} clients need distinct ids")
    shared = broker.shared_connection(f"fedhive host {host_id}")
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-host") if training is None else None
    try:
        async with shared:
            # Clients whose ids name this host share its queue and broker user (one set-up, not
            # one per client); others (ids made without --hosted-by) get an endpoint each.
            own = {cid: client_codec(cid, keys[cid], artifacts=broker.artifacts)
                   for cid in sites if host_named(cid) == host_id}  # fmt: skip

            def endpoint(node: str, sink: Sink) -> AmqpTransport:
                codec = client_codec(node, keys[node], artifacts=broker.artifacts)
                speaks_for = own if node == host_id else None
                return broker.transport(node, codec, declares=False, shared=shared, sink=sink, speaks_for=speaks_for)

            apart = [cid for cid in sites if cid not in own]
            link = MuxLink(host_id, apart, endpoint, coordinator=COORDINATOR_ID, speaks_for=own)
            hosted = [
                HostedClient(cid, _NotEnabled(), site.num_examples, site.label_counts or None)
                for cid, site in sites.items()
            ]
            node = ClientHost(
                host_id,
                link,
                hosted,
                training=training or InProcessTraining(pool, fold=True),
                register_timeout_s=settings.register_timeout_s,
                heartbeat_interval_s=settings.heartbeat_interval_s,
                coordinator_timeout_s=settings.coordinator_timeout_s,
                on_registered=on_registered,
                trainers_for=lambda cid, config: sites[cid].trainer_for(config),
                first_index=first_index,
                secure_sums=False,  # no secure-aggregation link over a broker yet: secure sessions refused
            )
            async with link:
                await node.run()
            return node.rounds_trained
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
