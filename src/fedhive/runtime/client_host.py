"""Many virtual clients behind one node: the fast path of the in-process simulation.

A ``ClientNode`` per virtual client costs a TRAIN and an UPDATE message per round, each
dispatched, checked and folded on its own; with a small model that is about a third of the
training time itself. A host answers for all its clients on one transport endpoint (the memory
transport's aliases): it registers each of them with ``host`` set, receives one TRAIN per round
listing those selected, trains them one after another in the fixed order the coordinator gives,
checks every update (names, shapes, dtypes, finiteness) and folds it into a partial aggregate of
the session's strategy, and sends one ``partial`` per chunk of clients (``runtime.hosted``). The
coordinator still decides who trains, and still accepts or rejects each client.

The host speaks the protocol; where its clients train is its ``HostTraining``'s business: in this
process (``InProcessTraining``) or in worker processes (``parallel_host.PoolTraining``). Both cut
a round into the same chunks (``train_in_chunks``), whose size is fixed (by model bytes), so the
same seed groups the same sums and the final model is bitwise reproducible. With a worker thread
(``threaded``), each client's result goes out as soon as it is ready, as a node's would: a client
stuck in its trainer then costs only its own update, not those of the clients trained before it.

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
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedhive.app.learner import FitConfig, Trainer
from fedhive.core.bodies import (
    EvaluateBody,
    HeartbeatBody,
    Member,
    PartialBody,
    RegisterBody,
    RegisteredBody,
    StopBody,
    TrainBody,
    failure_rows,
    parse_body,
)
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime.client import check_app_named, read_enable
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.evaluation import evaluation_body
from fedhive.runtime.hosted import HOSTING, train_items
from fedhive.runtime.inline_executor import InlineExecutor, run_job
from fedhive.runtime.partials import partial_message, raw_message
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Aggregator, Update
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples
from fedhive.transports.base import Transport, TransportClosed

log = logging.getLogger("fedhive.client_host")

MAX_REGISTER_RETRY_S = 30.0  # a networked host's registrations, sent again after 2, 4, 8, ... s
# A networked host's REGISTERs unanswered at once: the next go out as answers come back, so that
# ten hosts of 1000 keep the coordinator's queue at a few thousand, never 10,000 plus retries.
REGISTER_WINDOW = 256
CHUNK_BYTES = 4 * 1024 * 1024  # model bytes folded per partial: 100 small models, or one big one
MAX_CHUNK = 64

FitItems = list[tuple[str, FitConfig]]  # (client, its fit configuration), in the coordinator's order
Evaluated = tuple[list[Member], list[tuple[str, str]]]  # (members, failures)


@dataclass(frozen=True, slots=True)
class HostedClient:
    client_id: str
    trainer: Trainer
    num_examples: int
    label_counts: dict[str, int] | None = None  # what its REGISTER reports, as a client node's does


@runtime_checkable
class AddressedLink(Protocol):
    """A host's transport over a broker: each message comes with the id it was addressed to (the
    host's, or one of its clients'), and ``last_heard`` says when the coordinator last spoke."""

    last_heard: float

    async def recv_addressed(self) -> tuple[str, Message]: ...


@dataclass(frozen=True, slots=True)
class TrainRound:
    """One TRAIN for a host's clients: who trains, in which order, from which global model."""

    config: SessionConfig
    round: int
    attempt: int
    items: FitItems
    params: Params
    spec: ParamSpec

    def screen(self) -> UpdateScreen:
        """The checks the coordinator makes of each update, made before it is sent."""
        config = self.config
        return UpdateScreen(self.params, max_update_norm=config.max_update_norm, max_model_jump=config.max_model_jump)

    def weight(self, client: HostedClient, reported: int) -> int:
        """The client's example count as the session caps it (the count it registered with)."""
        config = self.config
        return capped_examples(
            reported, client.num_examples, factor=config.examples_cap_factor, ceiling=config.max_examples_per_client
        )


@dataclass(slots=True)
class Chunk:
    """The clients of one partial: folded into ``aggregator``, or kept in ``updates`` to go raw."""

    aggregator: Aggregator | None  # None: the updates go raw (a strategy that cannot merge, or one)
    updates: list[Update]
    members: list[Member]
    failures: list[tuple[str, str]]


class HostedClients:
    """The clients a host answers for, in their order (a client's position is its partition), and
    those that cannot train the session's model, with why: the host finds them at ENABLE, and its
    training may add one (a client whose state cannot be saved). Training and evaluating them in
    this process is here, for ``InProcessTraining`` and for any client a pool trains here."""

    def __init__(self, host_id: str, clients: Sequence[HostedClient], first_index: int = 0) -> None:
        self.host_id = host_id
        self.by_id = {c.client_id: c for c in clients}
        # Its partition in the whole population: a host may hold one slice of it.
        self.position = {c.client_id: first_index + i for i, c in enumerate(clients)}
        self.unfit: dict[str, str] = {}  # client -> why it cannot train the session's model

    def admit(self, cid: str, chunk: Chunk) -> HostedClient | None:
        """The client ``cid`` if it may train; otherwise None, and its failure in ``chunk``."""
        client = self.by_id.get(cid)
        if client is None:
            log.warning("%s: TRAIN names %s, which it does not host", self.host_id, cid)
            return None  # not ours to answer for: the coordinator counts it missing
        if cid in self.unfit:
            chunk.failures.append((cid, self.unfit[cid]))
            return None
        return client

    def train(self, work: TrainRound, items: FitItems, chunk: Chunk, screen: UpdateScreen) -> None:
        """Train ``items`` here, in their order, into ``chunk``: each update checked and folded."""
        agg, spec = chunk.aggregator, work.spec
        for cid, fit in items:
            client = self.admit(cid, chunk)
            if client is None:
                continue
            try:
                result = client.trainer.fit(work.params, fit)
                # Names, shapes and dtypes here; finiteness in the screen below, which reads every
                # float tensor anyway: one pass over each update instead of two.
                check_against_spec(result.params, spec, what=f"update from {cid}", finite=not screen.checks_finite)
            except FedhiveError as exc:
                chunk.failures.append((cid, str(exc)))
                continue
            except Exception as exc:  # a bug in one client's trainer must not take the others down
                log.warning("%s: the trainer of %s raised", self.host_id, cid, exc_info=True)
                chunk.failures.append((cid, f"its trainer raised {type(exc).__name__}: {exc}"))
                continue
            refused = screen.refused(result.params)  # as the coordinator screens its own
            if refused is not None:
                chunk.failures.append((cid, f"update {refused}"))
                continue
            metrics = dict(result.metrics)
            update = Update(cid, result.params, work.weight(client, result.num_examples), metrics)
            if agg is not None:
                agg.add(update)
            else:
                chunk.updates.append(update)
            chunk.members.append(Member(cid, update.num_examples, metrics))

    def evaluate(self, params: Params, named: list[str]) -> Evaluated:
        """(members, failures) of the named clients' evaluations here, in their order."""
        members: list[Member] = []
        failures: list[tuple[str, str]] = []
        for cid in named:
            client = self.by_id.get(cid)
            if client is None:
                continue  # not ours to answer for
            try:
                result = client.trainer.evaluate(params)
            except FedhiveError as exc:
                failures.append((cid, str(exc)))
                continue
            except Exception as exc:  # a bug in one client's app must not take the others down
                log.warning("%s: the evaluation of %s raised", self.host_id, cid, exc_info=True)
                failures.append((cid, f"its evaluation raised {type(exc).__name__}: {exc}"))
                continue
            if result.num_examples < 1:
                failures.append((cid, "evaluated no examples"))
            else:
                members.append(Member(cid, result.num_examples, dict(result.metrics)))
        return members, failures


Deliver = Callable[[Chunk], Awaitable[None]]  # sends a chunk's partial to the coordinator
FillChunk = Callable[[Chunk, int, FitItems], Awaitable[None]]  # trains (chunk, index of its first, its items)


class HostTraining(Protocol):
    """Where a ``ClientHost``'s clients do a round's work: ``InProcessTraining``, or worker
    processes (``parallel_host.PoolTraining``). Either answers with the same chunks."""

    async def train_items(self, clients: HostedClients, work: TrainRound, deliver: Deliver) -> None:
        """Train ``work.items`` in their order, and ``deliver`` each chunk before the next trains."""
        ...

    async def evaluate_named(
        self, clients: HostedClients, config: SessionConfig, params: Params, named: list[str]
    ) -> Evaluated:
        """(members, failures) of the named clients' evaluations, in their order."""
        ...


async def train_in_chunks(work: TrainRound, size: int, fill: FillChunk, deliver: Deliver) -> None:
    """Cut ``work.items`` into chunks of ``size`` clients, in their order; ``fill`` trains each
    into its chunk, which is then delivered and dropped before the next one trains."""
    strategy = parse_strategy(work.config.strategy)
    items = work.items
    for start in range(0, len(items), size):
        part = items[start : start + size]
        # A chunk of one (a big model, or a worker thread) goes raw: a float64 partial sum of
        # one update would cost twice its memory and bytes for nothing.
        agg = strategy.aggregator(work.params) if strategy.mergeable and len(part) > 1 else None
        chunk = Chunk(agg, [], [], [])
        await fill(chunk, start, part)
        await deliver(chunk)
        del chunk
        # Let the coordinator fold it before the next chunk trains: in one process its receiver
        # runs in this pause (it was woken by the send), and a round's chunks of a big model
        # are then never all alive at once (ten 100 MB updates: 1 GB).
        await asyncio.sleep(0)


class InProcessTraining:
    """The clients train in this process: inline on the event loop, or in ``executor``'s thread.

    ``fold``: fold chunks of clients even in a thread (a networked host): over a broker a message
    per client cost the coordinator a publish, a confirm and a raw update to fold each, 4 ms a
    client, 4 s for a round of 1000, which is four simulated rounds."""

    def __init__(self, executor: Executor | None = None, *, fold: bool = False) -> None:
        self._executor = executor or InlineExecutor()
        self._fold = fold

    async def train_items(self, clients: HostedClients, work: TrainRound, deliver: Deliver) -> None:
        screen = work.screen()
        executor = self._executor
        folds = self._fold or isinstance(executor, InlineExecutor)
        size = chunk_size(work.params.nbytes) if folds else 1

        async def fill(chunk: Chunk, _start: int, part: FitItems) -> None:
            await run_job(executor, clients.train, work, part, chunk, screen)

        await train_in_chunks(work, size, fill, deliver)

    async def evaluate_named(
        self, clients: HostedClients, config: SessionConfig, params: Params, named: list[str]
    ) -> Evaluated:
        return await run_job(self._executor, clients.evaluate, params, named)


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
            tending.cancel()
            await asyncio.gather(tending, return_exceptions=True)

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
        clients = self._clients.by_id
        unfit: dict[str, str] = {}
        if self._trainers_for is not None:
            for cid, client in list(clients.items()):
                try:
                    clients[cid] = dataclasses.replace(client, trainer=self._trainers_for(cid, config))
                except FedhiveError as exc:  # the app is not the session's, its data cannot load, ...
                    unfit[cid] = str(exc)
        if config.compression != "none":
            why = f"{self.host_id} does not compress updates (session compression {config.compression!r})"
            unfit = dict.fromkeys(clients, why)
        if config.secure_aggregation and not self._secure_sums:
            why = f"{self.host_id} cannot sum its clients securely over a broker: run them without --host"
            unfit = dict.fromkeys(clients, why)
        for cid, client in clients.items():
            own = getattr(client.trainer, "param_spec", None)
            if cid not in unfit and isinstance(own, ParamSpec) and own != spec:
                unfit[cid] = (
                    f"{cid}: the session's model does not fit this client's data: check its features and label classes"
                )
        self._clients.unfit = unfit

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
            await self._send(self._answer(work, chunk))

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

    def _answer(self, work: TrainRound, chunk: Chunk) -> Message:
        round, attempt = work.round, work.attempt
        if not chunk.members:
            body = PartialBody.model_construct(
                mode="none", attempt=attempt, members=[], failures=failure_rows(chunk.failures)
            )
            return make(Kind.PARTIAL, self.host_id, session_id=self._session_id, round=round, body=body.to_body())
        if chunk.aggregator is None:
            return raw_message(
                self.host_id,
                self._session_id,
                round,
                attempt,
                chunk.updates,
                members=chunk.members,
                failures=chunk.failures,
            )
        clients = [m.client_id for m in chunk.members]
        partial = chunk.aggregator.partial()
        return partial_message(
            self.host_id, self._session_id, round, attempt, partial, clients, spec=work.spec, exact=True,
            members=chunk.members, failures=chunk.failures,
        )  # fmt: skip

    async def _send(self, msg: Message) -> None:
        try:
            await self.transport.send(self._coordinator, msg)
        except TransportError as exc:
            log.warning("%s: could not send %s: %s", self.host_id, msg.kind, exc)


def chunk_size(model_bytes: int) -> int:
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // max(1, model_bytes)))
