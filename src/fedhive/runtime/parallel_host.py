"""A ``ClientHost`` whose clients train in worker processes: every core (or GPU) of the machine.

It answers the coordinator exactly as a ``ClientHost`` does (the same registrations, one
``partial`` per chunk of clients, the same members and failures), and its partials are the same
bits: chunks are cut by model size as in one process (``client_host.chunk_size``), never by the
number of workers, and each chunk's updates are folded here, in the coordinator's order, as they
come back from the workers (``WorkerPool`` batches give outcomes in job order). The workers only
train and check; the float64 sums are formed in this one process, in one fixed order. So a seed
gives the same model with 1, 2 or 16 workers. Which process trained a client does not matter
either, and that lets an *adaptive* pool (``fedhive simulate`` without ``--workers``) start
late: clients train here, one after another, until they prove slow enough for worker processes
to pay for their start (``launch_worth_it``); the pool then starts while training goes on here,
and takes over, mid-round if need be, once every worker has loaded the app. A session of cheap
clients never starts a worker.

Memory does not grow with the number of clients: the global model is shared with the workers once
per round, updates wait in a few reused slots until their turn to be folded, and a client's
``ctx.state`` (kept here between its tasks) is the only per-client data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from fedhive.app.learner import FitConfig
from fedhive.app.state_store import encode_state
from fedhive.core.bodies import Member
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import AppError
from fedhive.runtime.client_host import ClientHost, HostedClient, _Chunk, chunk_size
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.worker_pool import Batch, Job, Outcome, WorkerPool
from fedhive.strategies.base import Update
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen
from fedhive.transports.base import Transport

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


class ParallelClientHost(ClientHost):
    def __init__(
        self,
        host_id: str,
        transport: Transport,
        clients: Sequence[HostedClient],
        pool: WorkerPool,
        *,
        coordinator_id: str = COORDINATOR_ID,
        register_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(
            host_id, transport, clients, coordinator_id=coordinator_id, register_timeout_s=register_timeout_s
        )
        self._pool = pool
        self._index = {c.client_id: i for i, c in enumerate(clients)}  # its partition_id
        self._states: dict[str, bytes] = {}  # ctx.state of the clients that have one, between tasks
        self._in_use = False  # whether the workers train the clients (``_take_over``)
        self._launched = False  # an adaptive pool: its start is under way (or over)
        self._given_up = False  # an adaptive pool that could not start: every client trains here
        self._here_s = 0.0  # training time of the clients trained here, and how many
        self._here_n = -1  # the first is not counted: a first call warms caches up (imports, data)

    async def _train_items(
        self,
        config: SessionConfig,
        round: int,
        attempt: int,
        items: list[tuple[str, FitConfig]],
        params: Params,
        spec: ParamSpec,
    ) -> None:
        strategy = parse_strategy(config.strategy)
        screen: UpdateScreen | None = None  # for clients trained here
        size = chunk_size(params.nbytes)  # as in one process: the same chunks, the same sums
        batch: Batch | None = None
        try:
            for start in range(0, len(items), size):
                part = items[start : start + size]
                agg = strategy.aggregator(params) if strategy.mergeable and len(part) > 1 else None
                chunk = _Chunk(agg, [], [], [])
                for j, (cid, fit) in enumerate(part, start):
                    if batch is None and await self._take_over():
                        batch = await self._batch(config, params, items[j:], round)
                    if batch is not None:
                        await self._fold_from(batch, chunk, cid)
                        continue
                    if screen is None:
                        mj, mu = config.max_model_jump, config.max_update_norm
                        screen = UpdateScreen(params, max_update_norm=mu, max_model_jump=mj)
                    await self._train_here(chunk, params, cid, fit, spec, screen)
                    self._maybe_launch(spec, len(items) - j - 1 + len(items) * (config.rounds - round))
                await self._send(self._answer(round, attempt, chunk, spec))
                del chunk
                await asyncio.sleep(0)  # the coordinator folds it before the next chunk (as ClientHost)
        finally:
            if batch is not None:
                batch.close()

    async def _batch(
        self, config: SessionConfig, params: Params, items: list[tuple[str, FitConfig]], round: int
    ) -> Batch:
        self._pool.enable(config)
        await self._pool.publish(params)
        jobs = [
            Job("fit", self._index[cid], cid, {"fit": fit.to_json(), "round": round}, self._states.get(cid, b""))
            for cid, fit in items
            if cid in self._clients and cid not in self._unfit
        ]
        return self._pool.batch(jobs, within_s=_answer_within(config))

    async def _fold_from(self, batch: Batch, chunk: _Chunk, cid: str) -> None:
        """Client ``cid``'s outcome into its chunk, as ``ClientHost._train_chunk`` folds a result."""
        if cid not in self._clients:
            log.warning("%s: TRAIN names %s, which it does not host", self.host_id, cid)
            return
        if cid in self._unfit:
            chunk.failures.append((cid, self._unfit[cid]))
            return
        outcome = await batch.next()
        self._keep_state(outcome)
        if outcome.reason is not None or outcome.params is None:
            chunk.failures.append((cid, outcome.reason or "its worker gave no update"))
            return
        weight = self._weight(self._clients[cid], outcome.num_examples)
        if chunk.aggregator is not None:
            chunk.aggregator.add(Update(cid, outcome.params, weight, outcome.metrics))  # summed from the slot
        else:  # kept until the chunk goes out, and the slot is reused meanwhile
            copy = Params({name: arr.copy() for name, arr in outcome.params.items()})
            chunk.updates.append(Update(cid, copy, weight, outcome.metrics))
        chunk.members.append(Member(cid, weight, outcome.metrics))

    async def _train_here(
        self, chunk: _Chunk, params: Params, cid: str, fit: FitConfig, spec: ParamSpec, screen: UpdateScreen
    ) -> None:
        """One client in this process, by ``ClientHost``'s own code, into the same chunk."""
        began = time.perf_counter()
        one = self._train_chunk(params, [(cid, fit)], chunk.aggregator, spec, screen)
        if self._here_n >= 0:
            self._here_s += time.perf_counter() - began
        self._here_n += 1
        chunk.updates += one.updates
        chunk.members += one.members
        chunk.failures += one.failures
        if self._launched and not self._in_use:
            await asyncio.sleep(0)  # the workers' start handshakes go on meanwhile

    def _maybe_launch(self, spec: ParamSpec, clients_left: int) -> None:
        """An adaptive pool: start the workers once the clients trained here show they pay."""
        if self._in_use or self._given_up or self._launched or not self._pool.adaptive:
            return
        if self._here_n >= MIN_MEASURED and launch_worth_it(self._here_s / self._here_n, clients_left):
            log.info("%s: clients take %.1f ms each: starting %d worker processes", self.host_id,
                     1000 * self._here_s / self._here_n, self._pool.size)  # fmt: skip
            self._pool.start_soon(spec)
            self._launched = True

    async def _take_over(self) -> bool:
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
                log.warning("%s: clients train in this process, not in worker processes: %s", self.host_id, exc)
                self._given_up = True
                await self._pool.aclose()
                return False
        for c in self._clients.values():
            if (state := _state_of(c)) is not None:
                try:
                    self._states[c.client_id] = encode_state(state)
                except AppError as exc:  # as a client process that cannot save its state: it fails
                    self._unfit[c.client_id] = str(exc)
        self._in_use = True
        return True

    async def _evaluate_named(self, params: Params, named: list[str]) -> tuple[list[Member], list[tuple[str, str]]]:
        if not await self._take_over():
            return await super()._evaluate_named(params, named)
        assert self._config is not None
        self._pool.enable(self._config)
        await self._pool.publish(params)
        ours = [cid for cid in named if cid in self._clients]
        jobs = [Job("evaluate", self._index[c], c, {}, self._states.get(c, b"")) for c in ours]
        batch = self._pool.batch(jobs, within_s=_answer_within(self._config))
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
