"""How a ``ClientHost``'s clients do a round's work, and what it sends for them.

The host speaks the protocol (``client_host``); where its clients train is its ``HostTraining``'s
business: in this process (``InProcessTraining``) or in worker processes
(``parallel_host.PoolTraining``). Both cut a round into the same chunks (``train_in_chunks``),
whose size is fixed (by model bytes), so the same seed groups the same sums and the final model is
bitwise reproducible. Each update is checked (names, shapes, dtypes, finiteness, the session's
screen) and folded into a partial aggregate of the session's strategy before it is sent
(``chunk_message``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from fedhive.app.learner import FitConfig, Trainer
from fedhive.core.bodies import Member, PartialBody, failure_rows
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import FedhiveError
from fedhive.runtime.inline_executor import InlineExecutor, run_job
from fedhive.runtime.partials import partial_message, raw_message
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Aggregator, Update
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples

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
    label_counts: dict[str, int] | None = None  # what its REGISTER reports, as a client node's does


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

    def enable(
        self,
        config: SessionConfig,
        spec: ParamSpec,
        trainers_for: Callable[[str, SessionConfig], Trainer] | None,
        *,
        secure_sums: bool,
    ) -> None:
        """Ready the clients for the session an ENABLE announced: each one's trainer for it
        (``trainers_for``; None: they came with theirs), and which of them cannot train it, and why."""
        clients = self.by_id
        unfit: dict[str, str] = {}
        if trainers_for is not None:
            for cid, client in list(clients.items()):
                try:
                    clients[cid] = dataclasses.replace(client, trainer=trainers_for(cid, config))
                except FedhiveError as exc:  # the app is not the session's, its data cannot load, ...
                    unfit[cid] = str(exc)
        if config.compression != "none":
            why = f"{self.host_id} does not compress updates (session compression {config.compression!r})"
            unfit = dict.fromkeys(clients, why)
        if config.secure_aggregation and not secure_sums:
            why = f"{self.host_id} cannot sum its clients securely over a broker: run them without --host"
            unfit = dict.fromkeys(clients, why)
        for cid, client in clients.items():
            own = getattr(client.trainer, "param_spec", None)
            if cid not in unfit and isinstance(own, ParamSpec) and own != spec:
                unfit[cid] = (
                    f"{cid}: the session's model does not fit this client's data: check its features and label classes"
                )
        self.unfit = unfit

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


def chunk_size(model_bytes: int) -> int:
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // max(1, model_bytes)))


def chunk_message(host_id: str, session_id: str, work: TrainRound, chunk: Chunk) -> Message:
    """The PARTIAL that answers for ``chunk``: folded, raw updates, or only failures."""
    round, attempt = work.round, work.attempt
    if not chunk.members:
        body = PartialBody.model_construct(
            mode="none", attempt=attempt, members=[], failures=failure_rows(chunk.failures)
        )
        return make(Kind.PARTIAL, host_id, session_id=session_id, round=round, body=body.to_body())
    if chunk.aggregator is None:
        return raw_message(
            host_id,
            session_id,
            round,
            attempt,
            chunk.updates,
            members=chunk.members,
            failures=chunk.failures,
        )
    clients = [m.client_id for m in chunk.members]
    partial = chunk.aggregator.partial()
    return partial_message(
        host_id, session_id, round, attempt, partial, clients, spec=work.spec, exact=True,
        members=chunk.members, failures=chunk.failures,
    )  # fmt: skip
