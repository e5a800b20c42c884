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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from fedhive.app.learner import FitConfig, Trainer
from fedhive.core.bodies import (
    EvaluateBody,
    Member,
    PartialBody,
    RegisterBody,
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
from fedhive.runtime.hosted import train_items
from fedhive.runtime.inline_executor import InlineExecutor, run_job
from fedhive.runtime.partials import partial_message, raw_message
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Aggregator, Update
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples
from fedhive.transports.base import Transport, TransportClosed

log = logging.getLogger("fedhive.client_host")

CHUNK_BYTES = 4 * 1024 * 1024  # model bytes folded per partial: 100 small models, or one big one
MAX_CHUNK = 64

FitItems = list[tuple[str, FitConfig]]  # (client, its fit configuration), in the coordinator's order
Evaluated = tuple[list[Member], list[tuple[str, str]]]  # (members, failures)


@dataclass(frozen=True, slots=True)
class HostedClient:
    client_id: str
    trainer: Trainer
    num_examples: int


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

    def __init__(self, host_id: str, clients: Sequence[HostedClient]) -> None:
        self.host_id = host_id
        self.by_id = {c.client_id: c for c in clients}
        self.position = {c.client_id: i for i, c in enumerate(clients)}
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
            _distance, refused = screen.refusal(result.params)  # as the coordinator screens its own
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
    """The clients train in this process: inline on the event loop, or in ``executor``'s thread."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor or InlineExecutor()

    async def train_items(self, clients: HostedClients, work: TrainRound, deliver: Deliver) -> None:
        screen = work.screen()
        executor = self._executor
        size = chunk_size(work.params.nbytes) if isinstance(executor, InlineExecutor) else 1

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
    ) -> None:
        self.host_id = host_id
        self.transport = transport
        self._clients = HostedClients(host_id, clients)
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
        host's transport (``simulation.run_federation``)."""
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
        unreached = []
        for cid in clients:
            body = RegisterBody.model_construct(num_examples=self._clients.by_id[cid].num_examples, host=self.host_id)
            try:
                await self.transport.send(self._coordinator, make(Kind.REGISTER, cid, body=body.to_body()))
            except TransportError:
                unreached.append(cid)
        return unreached

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
        if config.compression != "none":
            why = f"{self.host_id} does not compress updates (session compression {config.compression!r})"
            unfit = dict.fromkeys(clients, why)
        for cid, client in clients.items():
            own = getattr(client.trainer, "param_spec", None)
            if isinstance(own, ParamSpec) and own != spec and cid not in unfit:
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

        await self._training.train_items(self._clients, work, deliver)
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
