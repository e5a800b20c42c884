"""A hierarchical federation as separate processes over RabbitMQ: who signs and checks what.

- The coordinator is the flat one's (``networked.coordinator_codec``): combiners are entries of
  its credential store like clients (``fedhive clients add combiner-1``), and so are clients,
  which only ever ask it for an assignment.
- A combiner signs to the coordinator with its own secret and checks the coordinator with it,
  like a client; towards its clients it signs and checks with each client's secret, so it reads
  the same credential store as the coordinator (a combiner is trusted infrastructure, as in FEDn).
- A client signs with its own secret and accepts any sender whose message is signed with that
  secret: only the coordinator and the combiners hold it, and it cannot know in advance which
  combiner it will be sent to.

On the broker (docs/security.md, "Broker isolation") a combiner declares nothing: the coordinator
declares and binds its queue (``fedhive clients add --role combiner --broker-user``), and, when it
assigns a client to a combiner, opens the way from that combiner to that client only
(``CombinerRoutes``), so a combiner's broker user reaches exactly the clients it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedhive.core.bodies import RegisteredBody, parse_body
from fedhive.core.envelope import Kind, Message
from fedhive.core.signing import Verifier
from fedhive.core.wire import MAX_ENVELOPE_BYTES
from fedhive.errors import ConfigError, FedhiveError, TransportError
from fedhive.runtime.assigned_client import run_assigned_client
from fedhive.runtime.bus import EventBus
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.credentials import CredentialStore
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.networked import BrokerSettings, ClientSettings, coordinator_codec, plan_coordinator
from fedhive.runtime.resume import Checkpoint, coordinator_kwargs
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.site_app import SiteApp
from fedhive.strategies.base import Strategy
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.amqp_topology import Role
from fedhive.transports.base import TransportWrapper
from fedhive.transports.broker_users import SenderLogins
from fedhive.transports.wire_codec import WireCodec

Observer = Callable[[EventBus], None]


class CombinerRoutes(TransportWrapper):
    """The coordinator's transport, which binds a client's queue to the combiner it assigns the
    client to (``AmqpTransport.route_down``) before it tells the client: the combiner's answer
    to the client's first message must find the way open. Sends go one by one (the base class's
    ``send_many``) only where a REGISTERED is among them; a round's TRAINs keep the batching."""

    def __init__(self, inner: AmqpTransport) -> None:
        super().__init__(inner)
        self._amqp = inner

    async def send(self, to: str, message: Message) -> None:
        await self._route(to, message)
        await self.inner.send(to, message)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        for to, message in items:
            await self._route(to, message)
        return await self.inner.send_many(items)

    async def _route(self, to: str, message: Message) -> None:
        if message.kind is not Kind.REGISTERED:
            return
        try:
            combiner = parse_body(RegisteredBody, message).combiner
        except FedhiveError:
            return
        if combiner is not None:
            await self._amqp.route_down(to, combiner)


def combiner_codec(combiner_id: str, key: bytes, store: CredentialStore, broker: BrokerSettings) -> WireCodec:
    def secret_of(node: str) -> bytes | None:
        return key if node == COORDINATOR_ID else store.secret_of(node)

    # S3: its clients get presigned URLs from it, never credentials
    return WireCodec(secret_of, Verifier(secret_of), broker.artifacts, grants_uploads=True)


def assigned_client_codec(key: bytes, broker: BrokerSettings) -> WireCodec:
    return WireCodec(lambda _to: key, Verifier(lambda _sender: key), broker.artifacts)


async def run_combiner(
    combiner_id: str,
    key: bytes,
    store: CredentialStore,
    broker: BrokerSettings,
    *,
    heartbeat_interval_s: float = 5.0,
    heartbeat_timeout_s: float = 20.0,
    upstream_timeout_s: float = 60.0,
    exact_partials: bool = False,
    observers: Sequence[Observer] = (),
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve the coordinator until it says STOP; returns the number of rounds combined."""
    codec = combiner_codec(combiner_id, key, store, broker)
    logins = SenderLogins(store.broker_users)
    async with broker.transport(combiner_id, codec, logins=logins, role=Role.COMBINER) as transport:
        node = Combiner(
            combiner_id,
            transport,
            heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            upstream_timeout_s=upstream_timeout_s,
            exact_partials=exact_partials,
        )
        for attach in observers:
            attach(node.bus)
        if on_ready is not None:
            on_ready()
        result = await node.run()
        return int(result.rounds)


async def run_hierarchical_client(
    key: bytes,
    site: SiteApp,
    broker: BrokerSettings,
    settings: ClientSettings | None = None,
) -> int:
    """Ask the coordinator for a combiner, serve it (and the next, if it falls silent) until STOP;
    returns the rounds trained with the last combiner."""
    settings = settings or ClientSettings()
    client_id = site.client_id
    async with broker.transport(client_id, assigned_client_codec(key, broker), declares=False) as transport:
        node = await run_assigned_client(
            client_id,
            transport,
            site.trainer_for,
            num_examples=site.num_examples,
            assign_timeout_s=settings.register_timeout_s,
            combiner_timeout_s=settings.coordinator_timeout_s,
            label_counts=site.label_counts,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )
        return node.rounds_trained


async def run_hierarchical_coordinator(
    session: SessionFile,
    store: CredentialStore,
    broker: BrokerSettings,
    *,
    min_combiners: int = 1,
    observers: Sequence[Observer] = (),
    on_ready: Callable[[], None] | None = None,
    resume: Checkpoint | None = None,
    strategy: Strategy | None = None,
) -> SessionResult:
    """``networked.run_coordinator`` with combiners between it and the clients: it starts once
    ``min_combiners`` combiners hold ``min_clients`` clients between them. With ``resume`` the
    session goes on after the checkpoint's round; combiners still in it from before the crash are
    taken back as their heartbeats come in, with the clients they hold."""
    config = session.config
    evaluator, initial = plan_coordinator(session, broker)
    if resume is not None:
        if resume.params.spec != initial.spec:
            raise ConfigError(f"the checkpoint's model does not fit session {config.session_id}'s model")
        if resume.round >= config.rounds:
            return SessionResult(config.session_id, resume.params, resume.round, list(resume.history))
        initial = resume.params
    kwargs = coordinator_kwargs(config, resume, strategy=strategy)
    codec = coordinator_codec(
        store, artifacts=broker.artifacts, max_message_bytes=config.max_update_bytes + MAX_ENVELOPE_BYTES
    )
    logins = SenderLogins(store.broker_users, store.combiners)
    transport = broker.transport(COORDINATOR_ID, codec, logins=logins)
    async with transport:
        coordinator = HierarchicalCoordinator(
            config, CombinerRoutes(transport), initial, evaluator=evaluator, min_combiners=min_combiners, **kwargs
        )
        for attach in observers:
            attach(coordinator.bus)
        if on_ready is not None:
            on_ready()
        return await coordinator.run()
