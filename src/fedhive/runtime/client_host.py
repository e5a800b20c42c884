"""Many virtual clients behind one node: the fast path of the in-process simulation.

A ``ClientNode`` per virtual client costs a TRAIN and an UPDATE message per round, each
dispatched, checked and folded on its own; with a small model that is about a third of the
training time itself. A host answers for all its clients on one transport endpoint (the memory
transport's aliases): it registers each of them with ``host`` set, receives one TRAIN per round
listing those selected, trains them one after another in the fixed order the coordinator gives,
checks every update (names, shapes, dtypes, finiteness) and folds it into a partial aggregate of
the session's strategy, and sends one ``partial`` per chunk of clients (``runtime.hosted``). The
coordinator still decides who trains, and still accepts or rejects each client.

Where its clients train, and how each chunk of them is checked and folded, is
``host_training``'s (a ``HostTraining``: in this process, or ``parallel_host.PoolTraining``).

Compression is a client-node feature: a host refuses sessions that negotiate it (simulation runs
those with one ``ClientNode`` per client).

Over a broker (``fedhive client --virtual N --host ID``) the host's transport is an
``AddressedLink`` (``transports.amqp_shared.MuxLink``), which says which of its ids each message
was sent to, and sends each message signed by its own sender. The host registers every client
(a REGISTER signed with that client's own key), ``REGISTER_WINDOW`` unanswered at a time, sent
again after ``register_retry_s`` (doubling) while the coordinator answers none; it beats once for
all its registered clients, signed with its own key, at the interval the coordinator asks for
(the coordinator takes that beat for exactly the clients that named this host: ``runtime.hosted``);
it registers them all again when the coordinator says it knows none of them (a REGISTERED to the
host itself, after a restart), and gives up when the coordinator has been silent for
``coordinator_timeout_s``. Its partials fold chunks of clients even with a worker thread
(``InProcessTraining(fold=True)``). In one process (simulation) it does none of this: the
coordinator's process closes the host's transport when the session ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from fedhive.app.learner import Trainer
from fedhive.core.bodies import (
    EvaluateBody,
    HeartbeatBody,
    RegisterBody,
    RegisteredBody,
    StopBody,
    TrainBody,
    parse_body,
)
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import ParamSpec
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime.client import check_app_named, read_enable
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.evaluation import evaluation_body
from fedhive.runtime.host_training import (  # re-exported: where the host's training lived before
    Chunk,
    Deliver,
    Evaluated,
    FitItems,
    HostedClient,
    HostedClients,
    HostTraining,
    InProcessTraining,
    TrainRound,
    chunk_message,
    chunk_size,
    train_in_chunks,
)
from fedhive.runtime.hosted import HOSTING, train_items
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.base import Transport, TransportClosed

__all__ = ["AddressedLink", "Chunk", "ClientHost", "Deliver", "Evaluated", "FitItems", "HostTraining", "HostedClient",
           "HostedClients", "InProcessTraining", "TrainRound", "chunk_size", "train_in_chunks"]  # fmt: skip

log = logging.getLogger("fedhive.client_host")

MAX_REGISTER_RETRY_S = 30.0  # a networked host's registrations, sent again after 2, 4, 8, ... s
# A networked host's REGISTERs unanswered at once: the next go out as answers come back, so that
# ten hosts of 1000 keep the coordinator's queue at a few thousand, never 10,000 plus retries.
REGISTER_WINDOW = 256


@runtime_checkable
class AddressedLink(Protocol):
    """A host's transport over a broker: each message comes with the id it was addressed to (the
    host's, or one of its clients'), and ``last_heard`` says when the coordinator last spoke."""

    last_heard: float

    async def recv_addressed(self) -> tuple[str, Message]: ...


class ClientHost:
    """Answers the coordinator for ``clients``; ``training`` is where they train (by default
    ``InProcessTraining``, inline)."""

    def __init__(
        self,
        host_id: str,
        transport: Transport,
        clients: Sequence[HostedClient],
        *,
        training: HostTraining | None = None,
        coordinator_id: str = COORDINATOR_ID,
        register_retry_s: float = 2.0,
        register_timeout_s: float = 120.0,
        max_payload_bytes: int = 256 * 1024 * 1024,
        heartbeat_interval_s: float = 5.0,
        coordinator_timeout_s: float | None = None,
        on_registered: Callable[[int, int], None] | None = None,
        trainers_for: Callable[[str, SessionConfig], Trainer] | None = None,
        first_index: int = 0,
        secure_sums: bool = True,
    ) -> None:
        self.host_id = host_id
        # Whether a secure-aggregation link answers this host's TRAINs in secure sessions
        # (simulate's ``secagg.host_link``). A host without one must refuse them: its plain partial
        # would show the coordinator the sum of its clients, which secure aggregation promises it
        # never sees.
        self._secure_sums = secure_sums
        # Each client's trainer for the session ENABLE announces (a networked host's clients
        # learn the session only then); None: ``clients`` come with theirs (simulation).
        self._trainers_for = trainers_for
        # Over a broker only (an AddressedLink): see the module's docstring.
        self._heartbeat_s = heartbeat_interval_s  # until the coordinator says how often it wants one
        self._coordinator_timeout_s = coordinator_timeout_s
        self._on_registered = on_registered  # (clients registered so far, all clients)
        self._unregistered: set[str] = set()
        self._to_register: list[str] = []  # not sent yet, in their order (REGISTER_WINDOW at a time)
        self._outstanding: dict[str, float] = {}  # sent and not answered yet -> when last sent
        self._register_since = 0.0  # when registering (again) began: register_timeout_s runs from it
        self._last_answer = 0.0  # when the coordinator last answered one of our REGISTERs
        self._retry_s = register_retry_s  # grows while the coordinator stays behind
        self._beating: list[str] = []  # registered clients, in their order
        self._failure: SessionFailed | None = None
        self._busy = False
        self.transport = transport
        self._clients = HostedClients(host_id, clients, first_index)
        self._training: HostTraining = training or InProcessTraining()
        self._coordinator = coordinator_id
        self._register_retry_s = register_retry_s
        self._register_timeout_s = register_timeout_s
        self._max_payload = max_payload_bytes
        self._session_id = ""
        self._config: SessionConfig | None = None
        self._spec: ParamSpec | None = None
        self._rounds_done: set[int] = set()  # a round trained twice (its TRAIN sent again) counts once

    @property
    def rounds_trained(self) -> int:
        return len(self._rounds_done)

    async def run(self) -> None:
        """Serve until the coordinator says STOP; raises ``SessionFailed`` if it never answers.

        Once registered it waits for the coordinator without a clock of its own: a host lives in
        its coordinator's process, whose session ends at its own deadlines and then closes this
        host's transport (``simulation.run_federation``). Over a broker, see ``_run_addressed``."""
        if isinstance(self.transport, AddressedLink):
            await self._run_addressed(self.transport)
            return
        pending = await self._register(list(self._clients.by_id))
        deadline = time.monotonic() + self._register_timeout_s
        while True:
            try:
                async with asyncio.timeout(self._register_retry_s if pending else None):
                    msg = await self.transport.recv()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    waited = f"{self._register_timeout_s:.0f} s"
                    raise SessionFailed(f"{self.host_id}: the coordinator did not answer within {waited}") from None
                pending = await self._register(pending)
                continue
            except TransportClosed:
                return
            if msg.sender != self._coordinator:
                log.warning("%s: ignored %s from %s (not the coordinator)", self.host_id, msg.kind, msg.sender)
                continue
            try:
                if await self._handle(msg):
                    return
            except FedhiveError as exc:
                log.warning("%s: cannot act on %s: %s", self.host_id, msg.kind, exc)

    async def _register(self, clients: list[str]) -> list[str]:
        """REGISTER for each client; returns those the coordinator could not be reached for."""
        messages = []
        for cid in clients:
            client = self._clients.by_id[cid]
            body = RegisterBody.model_construct(num_examples=client.num_examples, host=self.host_id)
            if client.label_counts:
                body = body.model_copy(update={"label_counts": client.label_counts})
            messages.append((self._coordinator, make(Kind.REGISTER, cid, body=body.to_body())))
        if isinstance(self.transport, AddressedLink):  # over a broker: all at once, not a round trip each
            results = await self.transport.send_many(messages)
            return [cid for cid, error in zip(clients, results, strict=True) if error is not None]
        unreached = []
        for cid, (to, msg) in zip(clients, messages, strict=True):  # in their order: the run is reproducible
            try:
                await self.transport.send(to, msg)
            except TransportError:
                unreached.append(cid)
        return unreached

    # -- over a broker ----------------------------------------------------------------------------
    async def _run_addressed(self, link: AddressedLink) -> None:
        """Serve over a broker: every client registered and beating, as its own node would be."""
        self._register_all()
        await self._register_next()
        tending = asyncio.create_task(self._tend(link), name=f"host-{self.host_id}-tend")
        try:
            while True:
                try:
                    to, msg = await link.recv_addressed()
                except TransportClosed:
                    if self._failure is not None:
                        raise self._failure from None
                    return
                if msg.sender != self._coordinator:
                    log.warning("%s: ignored %s from %s (not the coordinator)", to, msg.kind, msg.sender)
                    continue
                try:
                    if msg.kind is Kind.REGISTERED:
                        self._registered(to, parse_body(RegisteredBody, msg))
                        await self._register_next()
                    elif await self._handle(msg):
                        return
                except FedhiveError as exc:
                    if isinstance(exc, SessionFailed):
                        raise
                    log.warning("%s: cannot act on %s: %s", self.host_id, msg.kind, exc)
        finally:
            await stop_tasks([tending], owner=self.host_id)

    def _register_all(self) -> None:
        """Every client to register (again), in their order: at the start, or when the coordinator
        says it knows none of them (a REGISTERED to the host itself: it restarted)."""
        ids = list(self._clients.by_id)
        self._unregistered, self._to_register, self._outstanding = set(ids), ids, {}
        self._beating = []
        self._register_since = self._last_answer = asyncio.get_running_loop().time()
        self._retry_s = self._register_retry_s

    async def _register_next(self) -> None:
        """Fill the window of unanswered REGISTERs again once half of it is answered."""
        room = REGISTER_WINDOW - len(self._outstanding)
        if not self._to_register or room < REGISTER_WINDOW // 2:
            return
        batch, self._to_register = self._to_register[:room], self._to_register[room:]
        now = asyncio.get_running_loop().time()
        self._outstanding.update(dict.fromkeys(batch, now))
        await self._register(batch)

    def _registered(self, client: str, body: RegisteredBody) -> None:
        if body.heartbeat_interval_s is not None and body.heartbeat_interval_s > 0:
            self._heartbeat_s = float(body.heartbeat_interval_s)
        if client == self.host_id:
            log.warning("%s: the coordinator knows none of its clients (it restarted?): registering them again",
                        self.host_id)  # fmt: skip
            self._register_all()
            return
        if client not in self._unregistered:
            return  # answered twice (a REGISTER sent again), or not one of ours
        self._unregistered.discard(client)
        self._outstanding.pop(client, None)
        self._last_answer = asyncio.get_running_loop().time()
        self._beating.append(client)
        if self._on_registered is not None:
            self._on_registered(len(self._beating), len(self._clients.by_id))

    async def _tend(self, link: AddressedLink) -> None:
        """Register again those not answered yet, beat for those that are, and watch the
        coordinator's silence; a failure closes the link, which ends ``run`` with it."""
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        reconnects = self.transport.reconnects
        while True:
            await asyncio.sleep(min(self._register_retry_s, self._heartbeat_s))
            now = loop.time()
            # Sent again only once the coordinator has answered none of ours for a while: while
            # answers come it is working through its queue, and a copy would only lengthen it.
            quiet = now - self._last_answer >= self._retry_s
            stale = [c for c, sent in self._outstanding.items() if now - sent >= self._retry_s] if quiet else []
            if self._unregistered and now >= self._register_since + self._register_timeout_s:
                if not self._beating:
                    waited = f"{self._register_timeout_s:.0f} s"
                    await self._fail(f"{self.host_id}: the coordinator did not answer within {waited}")
                    return
                log.warning(
                    "%s: %d clients got no answer to their registration within %.0f s; not retrying",
                    self.host_id, len(self._unregistered), self._register_timeout_s,
                )  # fmt: skip
                self._unregistered.clear()
                self._to_register, self._outstanding = [], {}
            elif stale:
                # Only the window's unanswered ones go again, and backing off: a coordinator
                # answering 10,000 registrations is behind, not gone, and each round of retries
                # would only put more in front of it.
                self._outstanding.update(dict.fromkeys(stale, now))
                await self._register(stale)
                self._retry_s = min(2 * self._retry_s, MAX_REGISTER_RETRY_S)
            if not self._beating or now - last_beat < self._heartbeat_s:
                continue
            if now - last_beat > 2 * self._heartbeat_s:  # the coordinator counts every client silent
                log.warning("%s: heartbeat %.0f s late: this process's event loop was held", self.host_id,
                            now - last_beat - self._heartbeat_s)  # fmt: skip
            last_beat = now
            if not self.transport.connected or self.transport.reconnects != reconnects:
                reconnects = self.transport.reconnects  # our own link was down: the silence says nothing
                link.last_heard = time.monotonic()
            silence = time.monotonic() - link.last_heard
            timeout = self._coordinator_timeout_s
            if timeout is not None and silence > max(timeout, 3 * self._heartbeat_s):
                await self._fail(f"{self.host_id}: no message from the coordinator for {silence:.0f} s; giving up")
                return
            await self._beat()

    async def _beat(self) -> None:
        """One HEARTBEAT for all registered clients, signed by the host: the coordinator takes it
        for each client whose own REGISTER named this host, and for no other (``runtime.hosted``).
        A beat per client was 10,000 messages per interval at the coordinator for 10 hosts."""
        status = "TRAINING" if self._busy else "ONLINE"
        body = HeartbeatBody.model_construct(status=status).to_body() | {HOSTING: len(self._beating)}
        await self._send(make(Kind.HEARTBEAT, self.host_id, session_id=self._session_id, body=body))

    async def _fail(self, reason: str) -> None:
        self._failure = SessionFailed(reason)
        await self.transport.close()

    async def _handle(self, msg: Message) -> bool:
        """Act on one message from the coordinator; True when the session is over for us."""
        if msg.kind is Kind.ENABLE:
            self._enable(msg)
        elif msg.kind is Kind.TRAIN:
            await self._train(msg)
        elif msg.kind is Kind.EVALUATE:
            await self._evaluate(msg)
        elif msg.kind is Kind.STOP and (reason := parse_body(StopBody, msg).reason) is not None:
            raise SessionFailed(f"the coordinator ended the session: {reason}")
        elif msg.kind is Kind.STOP:
            log.info("%s: stopped by the coordinator after %d rounds", self.host_id, self.rounds_trained)
            return True
        return False

    def _enable(self, msg: Message) -> None:
        if self._config is not None and msg.envelope.session_id == self._session_id:
            return  # one ENABLE per hosted client, all alike
        config, spec = read_enable(msg)
        self._session_id, self._config, self._spec = msg.envelope.session_id, config, spec
        self._clients.enable(config, spec, self._trainers_for, secure_sums=self._secure_sums)

    async def _train(self, msg: Message) -> None:
        config, spec = self._config, self._spec
        if config is None or spec is None:
            raise ProtocolError("TRAIN before ENABLE")
        env = msg.envelope
        body = parse_body(TrainBody, msg)
        check_app_named(body.app_digest, config)
        items = train_items(body, env.round)
        params = payload_params(msg, spec, max_bytes=self._max_payload, what="global model")
        work = TrainRound(config, env.round, body.attempt, items, params, spec)

        async def deliver(chunk: Chunk) -> None:
            await self._send(chunk_message(self.host_id, self._session_id, work, chunk))

        self._busy = True
        try:
            await self._training.train_items(self._clients, work, deliver)
        finally:
            self._busy = False
        self._rounds_done.add(env.round)

    async def _evaluate(self, msg: Message) -> None:
        """Each named client judges the global model on its own data; one EVALUATION for all."""
        spec = self._spec
        if self._config is None or spec is None:
            raise ProtocolError("EVALUATE before ENABLE")
        env = msg.envelope
        body = parse_body(EvaluateBody, msg)
        check_app_named(body.app_digest, self._config)
        named = body.clients
        if named is None:
            raise ProtocolError("a host's EVALUATE must list its clients")
        params = payload_params(msg, spec, max_bytes=self._max_payload, what="global model")
        members, failures = await self._training.evaluate_named(self._clients, self._config, params, named)
        answer = evaluation_body(members, failures)
        await self._send(make(Kind.EVALUATION, self.host_id, session_id=self._session_id, round=env.round, body=answer))

    async def _send(self, msg: Message) -> None:
        try:
            await self.transport.send(self._coordinator, msg)
        except TransportError as exc:
            log.warning("%s: could not send %s: %s", self.host_id, msg.kind, exc)
