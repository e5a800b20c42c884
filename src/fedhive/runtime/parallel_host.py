"""A ``ClientHost``'s clients trained in worker processes: every core (or GPU) of the machine.

A host whose ``HostTraining`` is a ``PoolTraining`` answers the coordinator exactly as one that
trains in its own process (the same registrations, one ``partial`` per chunk of clients, the same
members and failures), and its partials are the same bits: chunks are cut by model size as in one
process (``client_host.train_in_chunks``), never by the number of workers, and each chunk's
updates are folded here, in the coordinator's order, as they come back from the workers
(``WorkerPool`` batches give outcomes in job order). The workers only train and check; the
float64 sums are formed in this one process, in one fixed order. So a seed gives the same model
with 1, 2 or 16 workers. Which process trained a client does not matter either, and that lets an
*adaptive* pool (``fedhive simulate`` without ``--workers``) start late: clients train here, one
after another, until they prove slow enough for worker processes to pay for their start
(``launch_worth_it``); the pool then starts while training goes on here, and takes over, mid-round
if need be, once every worker has loaded the app. A session of cheap clients never starts a worker.

Memory does not grow with the number of clients: the global model is shared with the workers once
per round, updates wait in a few reused slots until their turn to be folded, and a client's
``ctx.state`` (kept here between its tasks) is the only per-client data.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fedhive.app.state_store import encode_state
from fedhive.core.bodies import Member
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import AppError
from fedhive.runtime.host_training import (
    Chunk,
    Deliver,
    Evaluated,
    FitItems,
    HostedClient,
    HostedClients,
    TrainRound,
    chunk_size,
    train_in_chunks,
)
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.worker_pool import Batch, Job, Outcome, WorkerPool
from fedhive.strategies.base import Update
from fedhive.strategies.screening import UpdateScreen

log = logging.getLogger("fedhive.client_host")

# An adaptive pool starts once clients take at least this long each (a worker's per-client cost
# is a few hundred microseconds: below this, one process does as well) ...
MIN_CLIENT_S = 0.002
# ... and the training left, at that pace, would take at least this long here: about what
# starting the workers costs (a Python, numpy and the app per worker), so it pays for itself.
MIN_WORK_LEFT_S = 3.0


MIN_MEASURED = 3  # clients timed before deciding


def launch_worth_it(mean_client_s: float, clients_left: int) -> bool:
    return mean_client_s >= MIN_CLIENT_S and mean_client_s * clients_left >= MIN_WORK_LEFT_S


class PoolTraining:
    """A ``HostTraining`` whose clients train in ``pool``'s worker processes, once it has taken
    over (``_take_over``); until then, in this process, as ``InProcessTraining`` trains them."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._states: dict[str, bytes] = {}  # ctx.state of the clients that have one, between tasks
        self._in_use = False  # whether the workers train the clients (``_take_over``)
        self._launched = False  # an adaptive pool: its start is under way (or over)
        self._given_up = False  # an adaptive pool that could not start: every client trains here
        self._here_s = 0.0  # training time of the clients trained here, and how many
        self._here_n = -1  # the first is not counted: a first call warms caches up (imports, data)

    async def train_items(self, clients: HostedClients, work: TrainRound, deliver: Deliver) -> None:
        items, rounds_left = work.items, work.config.rounds - work.round
        screen: UpdateScreen | None = None  # for clients trained here
        batch: Batch | None = None  # the workers' outcomes, once they have taken over

        async def fill(chunk: Chunk, start: int, part: FitItems) -> None:
            nonlocal screen, batch
            for j, (cid, fit) in enumerate(part, start):
                if batch is None and await self._take_over(clients):
                    batch = await self._batch(clients, work, items[j:])
                if batch is not None:
                    await self._fold_from(clients, work, batch, chunk, cid)
                    continue
                if screen is None:
                    screen = work.screen()
                await self._train_here(clients, work, chunk, [(cid, fit)], screen)
                self._maybe_launch(clients, work.spec, len(items) - j - 1 + len(items) * rounds_left)

        try:  # chunks cut as in one process: the same chunks, the same sums
            await train_in_chunks(work, chunk_size(work.params.nbytes), fill, deliver)
        finally:
            if batch is not None:
                batch.close()

    async def _batch(self, clients: HostedClients, work: TrainRound, items: FitItems) -> Batch:
        self._pool.enable(work.config)
        await self._pool.publish(work.params)
        jobs = [
            Job(
                "fit",
                clients.position[cid],
                cid,
                {"fit": fit.to_json(), "round": work.round},
                self._states.get(cid, b""),
            )
            for cid, fit in items
            if cid in clients.by_id and cid not in clients.unfit
        ]
        return self._pool.batch(jobs, within_s=_answer_within(work.config))

    async def _fold_from(self, clients: HostedClients, work: TrainRound, batch: Batch, chunk: Chunk, cid: str) -> None:
        """Client ``cid``'s outcome into its chunk, as ``HostedClients.train`` folds a result."""
        client = clients.admit(cid, chunk)
        if client is None:
            return
        outcome = await batch.next()
        self._keep_state(outcome)
        if outcome.reason is not None or outcome.params is None:
            chunk.failures.append((cid, outcome.reason or "its worker gave no update"))
            return
        weight = work.weight(client, outcome.num_examples)
        if chunk.aggregator is not None:
            chunk.aggregator.add(Update(cid, outcome.params, weight, outcome.metrics))  # summed from the slot
        else:  # kept until the chunk goes out, and the slot is reused meanwhile
            copy = Params({name: arr.copy() for name, arr in outcome.params.items()})
            chunk.updates.append(Update(cid, copy, weight, outcome.metrics))
        chunk.members.append(Member(cid, weight, outcome.metrics))

    async def _train_here(
        self, clients: HostedClients, work: TrainRound, chunk: Chunk, one: FitItems, screen: UpdateScreen
    ) -> None:
        """One client in this process, by ``HostedClients.train``, into the same chunk."""
        began = time.perf_counter()
        clients.train(work, one, chunk, screen)
        if self._here_n >= 0:
            self._here_s += time.perf_counter() - began
        self._here_n += 1
        if self._launched and not self._in_use:
            await asyncio.sleep(0)  # the workers' start handshakes go on meanwhile

    def _maybe_launch(self, clients: HostedClients, spec: ParamSpec, clients_left: int) -> None:
        """An adaptive pool: start the workers once the clients trained here show they pay."""
        if self._in_use or self._given_up or self._launched or not self._pool.adaptive:
            return
        if self._here_n >= MIN_MEASURED and launch_worth_it(self._here_s / self._here_n, clients_left):
            log.info("%s: clients take %.1f ms each: starting %d worker processes", clients.host_id,
                     1000 * self._here_s / self._here_n, self._pool.size)  # fmt: skip
            self._pool.start_soon(spec)
            self._launched = True

    async def _take_over(self, clients: HostedClients) -> bool:
        """Whether the workers train the next client: from the first round for a pool started
        before the session, from when it is ready for an adaptive one. The clients' ``ctx.state``
        (kept by their trainers here so far: an app's ``init`` may have set it) moves to this host."""
        if self._in_use:
            return True
        if self._pool.adaptive:
            try:
                if not self._launched or self._given_up or not self._pool.started():
                    return False
            except Exception as exc:  # the workers could not start: every client stays here
                log.warning("%s: clients train in this process, not in worker processes: %s", clients.host_id, exc)
                self._given_up = True
                await self._pool.aclose()
                return False
        for c in clients.by_id.values():
            if (state := _state_of(c)) is not None:
                try:
                    self._states[c.client_id] = encode_state(state)
                except AppError as exc:  # as a client process that cannot save its state: it fails
                    clients.unfit[c.client_id] = str(exc)
        self._in_use = True
        return True

    async def evaluate_named(
        self, clients: HostedClients, config: SessionConfig, params: Params, named: list[str]
    ) -> Evaluated:
        if not await self._take_over(clients):
            return clients.evaluate(params, named)  # in this process, inline
        self._pool.enable(config)
        await self._pool.publish(params)
        ours = [cid for cid in named if cid in clients.by_id]
        jobs = [Job("evaluate", clients.position[c], c, {}, self._states.get(c, b"")) for c in ours]
        batch = self._pool.batch(jobs, within_s=_answer_within(config))
        members: list[Member] = []
        failures: list[tuple[str, str]] = []
        try:
            for _ in ours:
                outcome = await batch.next()
                self._keep_state(outcome)
                if outcome.reason is not None:
                    failures.append((outcome.client_id, outcome.reason))
                else:
                    members.append(Member(outcome.client_id, outcome.num_examples, outcome.metrics))
        finally:
            batch.close()
        return members, failures

    def _keep_state(self, outcome: Outcome) -> None:
        if outcome.state is None:  # its worker died: the state from before the task stays
            return
        if outcome.state:
            self._states[outcome.client_id] = outcome.state
        else:
            self._states.pop(outcome.client_id, None)


def _answer_within(config: SessionConfig) -> float:
    """How long the workers may take over a round's clients: the coordinator stops waiting at
    ``round_timeout_s`` after it sent TRAIN, and the others' partials must reach it before then."""
    return 0.9 * config.round_timeout_s


def _state_of(client: HostedClient) -> dict[str, object] | None:
    ctx = getattr(client.trainer, "ctx", None)
    state = getattr(ctx, "state", None)
    return state if isinstance(state, dict) and state else None
