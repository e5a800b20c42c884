"""The coordinator of one session (docs/architecture.md, "Rounds").

The session is one visible loop, ``_rounds``: select -> train -> collect until quorum or deadline
-> aggregate -> evaluate -> checkpoint -> next. Everything else is event-driven on the node's bus:
messages (registrations, heartbeats, updates) are handled as they come, by the ``Downstream``
(liveness, one round's collection) and its ``Membership`` (who takes part: clients, or combiners
in a hierarchical session); observers (run directory, checkpoint, MLflow, dashboard) follow the
events the loop emits. The coordinator never knows whether its clients are coroutines in this
process or processes on other continents. Every wait has a deadline with a readable outcome.
A session with ``aggregation = "async"`` runs ``runtime.async_rounds``' loop instead (FedBuff).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedhive.app.contract import EvalResult
from fedhive.app.learner import Evaluator
from fedhive.core.bodies import EnableBody, EvaluateBody, TrainBody
from fedhive.core.params import Params
from fedhive.core.stopping import stop_tasks
from fedhive.errors import SessionCancelled, SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.async_rounds import AsyncRounds
from fedhive.runtime.best_round import BestRound
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.client_membership import ClientMembership
from fedhive.runtime.downstream import COORDINATOR_ID, Downstream, Membership
from fedhive.runtime.evaluation import aggregate_metrics
from fedhive.runtime.inline_executor import run_job
from fedhive.runtime.model_check import Refused, aggregate_checked
from fedhive.runtime.population import Population
from fedhive.runtime.population_node import PopulationDownstream, PopulationMembership
from fedhive.runtime.registry import ClientRegistry
from fedhive.runtime.round_state import RoundState, shortfall_reason
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import AggregateResult, Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport

if TYPE_CHECKING:
    from fedhive.secagg.node_round import SecureRounds

__all__ = ["COORDINATOR_ID", "Coordinator", "SessionResult"]

log = logging.getLogger("fedhive.coordinator")

MembershipFactory = Callable[["Coordinator"], Membership]


@dataclass(frozen=True)
class SessionResult:
    session_id: str
    params: Params
    rounds: int
    history: list[dict[str, float]]  # global metrics per completed round
    best_round: int = 0  # the round whose global model was best by the key metric (0: none judged)
    key_metric: str | None = None
    stopped_early: bool = False

    @property
    def metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class Coordinator:
    def __init__(
        self,
        config: SessionConfig,
        transport: Transport,
        initial_params: Params,
        *,
        strategy: Strategy | None = None,
        evaluator: Evaluator | None = None,
        bus: EventBus | None = None,
        registry: ClientRegistry | None = None,
        executor: Executor | None = None,
        start_round: int = 1,
        history: Sequence[dict[str, float]] = (),  # of the rounds before start_round
        membership: MembershipFactory | None = None,  # default: clients (a flat session)
        population: Population | None = None,  # simulated clients too many to list (runtime.population)
    ) -> None:
        self.config = config
        self.transport = transport
        self.bus = bus or EventBus()
        self.strategy = strategy or parse_strategy(config.strategy)
        self.params = initial_params
        self._evaluator = evaluator
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="fedhive-aggregate")
        self.population = population
        if population is None:
            self.down = Downstream(config, transport, self.bus, self._executor, registry=registry)
        else:
            self.down = PopulationDownstream(config, transport, self.bus, self._executor, population)
        self.down.params = initial_params
        self.membership: Membership = (membership or (_clients if population is None else _population))(self)
        self.registry = self.down.registry
        # A strategy whose guarantees need its own client sampling (DP-FedAvg: Poisson). Over
        # combiners it would draw combiners, not clients, which is not what its accounting assumes.
        self._sampling = self.strategy.client_sampling() if isinstance(self.membership, ClientMembership) else None
        # Secure aggregation with clients (docs/secure_aggregation.md): the rounds' steps are
        # secagg's; over combiners each combiner runs them with its own group and sends a sum.
        self._secure: SecureRounds | None = None
        if config.secure_aggregation and isinstance(self.membership, ClientMembership):
            from fedhive.secagg.node_round import SecureRounds  # here: only its sessions need cryptography

            self._secure = SecureRounds(self.down, self.strategy)
        self._next_round = start_round
        self._history: list[dict[str, float]] = list(history)
        self.best = BestRound(config.key_metric, config.mode, config.patience)
        self.best.replay(self._history)
        self._stopped_early = False
        self._loop: asyncio.Task[None] | None = None
        self._registration_deadline: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        b = self.bus
        b.on(ev.MessageIn, self._on_message)
        b.on(ev.RegistrationDeadline, self._on_registration_deadline)
        b.on(ev.HeartbeatCheck, self._on_heartbeat_check)
        b.on(ev.SessionFailedEvent, self._on_failed)
        b.on(ev.CancelRequested, self._on_cancel_requested)
        # aggregation = async: clients train continuously and the loop is runtime.async_rounds'.
        self._async = AsyncRounds(self) if config.aggregation == "async" else None

    # -- the session ------------------------------------------------------------------------------
    async def _rounds(self) -> None:
        """Round after round: train (with retries) -> aggregate -> evaluate -> complete."""
        if self._async is not None:
            return await self._async.run()
        first_attempt = 0  # above 0 when a refused global model sends the round back to training
        while self._next_round <= self.config.rounds:
            rnd = self._next_round
            r = await self._train(rnd, first_attempt)
            if r is None:
                return  # the session failed, with its reason
            # A Poisson draw with nobody in it (over combiners: every combiner's own draw was empty):
            # the model stays, the round counts.
            if not r.selected or not r.aggregator.count:
                self.strategy.empty_round(rnd)
                self._complete(r, self.params, AggregateResult(self.params, 0, 0, {}), {})
                self._next_round += 1
                continue
            checked = await run_job(self._executor, self._aggregate, r)
            self.down.collector.close(r)  # its claim checks go back, behind the aggregation
            if isinstance(checked, Refused):
                if not self._refused(r, checked):
                    return
                first_attempt = r.attempt + 1
                continue
            first_attempt = 0
            params, aggregate = checked
            metrics = await self._evaluate(rnd, params) or self._train_figures(aggregate)
            self._complete(r, params, aggregate, metrics)
            self._next_round += 1
            if self.best.exhausted(rnd) and self._next_round <= self.config.rounds:
                best = self.best
                log.info(
                    "no better %s for %d rounds since round %d: stopping early",
                    best.key_metric,
                    rnd - best.round,
                    best.round,
                )
                self._stopped_early = True
                break
        await self._finish()

    async def _train(self, rnd: int, first_attempt: int = 0) -> RoundState | None:
        """One round's training: a new attempt while quorum is missed and retries are left."""
        for attempt in range(first_attempt, self.config.max_round_retries + 1):
            aggregator = self.strategy.aggregator(self.params)
            train_round = self._secure.train_round if self._secure is not None else self.down.train_round
            r = await train_round(rnd, attempt, self.params, aggregator, self.membership, self._fit, self._sampling)
            if isinstance(r, str):
                self._fail(r)
                return None
            need = self.config.quorum_size(len(r.selected))
            if len(r.accepted) >= need or not r.selected:
                return r
            self.down.collector.close(r)
            reason = shortfall_reason(r, need, r.missing(), self.config.round_timeout_s)
            if attempt == self.config.max_round_retries:
                self._fail(f"{reason}; gave up after {attempt + 1} attempts")
                return None
            log.warning("round %d attempt %d failed (%s); retrying", rnd, attempt + 1, reason)
            self.bus.emit(ev.RoundRetried(rnd, attempt, reason))
        return None

    def _fit(self, client_id: str, r: RoundState) -> TrainBody:
        # The strategy may ask for client-side settings (FedProx's proximal term); every TRAIN
        # names the app and its code digest: a site trains only the app it installed.
        fit = {**self.config.fit_config(r.round, r.index[client_id]).to_json(), **self.strategy.client_config()}
        return TrainBody.model_construct(fit=fit, app=self.config.app, app_digest=self.config.app_digest)

    def _aggregate(self, r: RoundState) -> tuple[Params, AggregateResult] | Refused:
        return aggregate_checked(self.strategy, self.params, r, self.down.collector.screen)

    def _refused(self, r: RoundState, refused: Refused) -> bool:
        """A refused global model is never applied nor checkpointed: the round is trained again
        without the update that moved the model most, while retries are left (runtime.model_check)."""
        log.error("%s: not applied", refused.reason)
        culprit = self.down.collector.exclude(r, f"excluded: {refused.reason}") if refused.retry else None
        if culprit is None or r.attempt >= self.config.max_round_retries:
            self._fail(f"{refused.reason}: not applied, and the round cannot be tried again without it")
            return False
        log.warning("round %d: trying again without the update of %s", r.round, culprit)
        self.bus.emit(ev.UpdateRejected(r.round, culprit, f"excluded: {refused.reason}"))
        self.bus.emit(ev.RoundRetried(r.round, r.attempt, refused.reason))
        return True

    async def _evaluate(self, rnd: int, params: Params) -> dict[str, float]:
        """The global model judged on the server side's held-out data (``central_evaluate``) and,
        every ``evaluate_every`` rounds, by clients on their own (``runtime.evaluation``); when
        both run, the clients' figures are named ``federated_<metric>``."""
        metrics: dict[str, float] = {}
        if self._evaluator is not None:
            central: EvalResult = await run_job(self._executor, self._evaluator.evaluate, params)
            metrics.update(central.metrics)
        if self.config.evaluates(rnd):
            body = EvaluateBody.model_construct(app=self.config.app, app_digest=self.config.app_digest)
            e = await self.down.evaluate_round(rnd, params, self.membership, body)
            federated = aggregate_metrics(list(e.results.values()), self.config.metric_rules)
            prefix = "federated_" if self._evaluator is not None else ""
            metrics.update({prefix + name: value for name, value in federated.items()})
            self.bus.emit(ev.EvaluationCompleted(rnd, federated, len(e.results), dict(e.failed)))
        return metrics

    @staticmethod
    def _train_figures(aggregate: AggregateResult) -> dict[str, float]:
        """Without any evaluation, the round is judged by its clients' training figures."""
        return {k: aggregate.metrics[k] for k in ("loss", "accuracy") if k in aggregate.metrics}

    def _complete(self, r: RoundState, params: Params, aggregate: AggregateResult, metrics: dict[str, float]) -> None:
        self.params = params
        train = aggregate.metrics
        metrics.update(self.strategy.round_metrics())  # e.g. DP-FedAvg's epsilon spent so far
        self._history.append(metrics)
        if self.best.offer(r.round, metrics):
            assert self.best.key_metric is not None and self.best.value is not None
            self.bus.emit(ev.BestModel(r.round, self.best.key_metric, self.best.value, params))
        missing = sorted(set(r.selected) - r.accepted)
        duration = time.monotonic() - r.started
        self.bus.emit(
            ev.RoundCompleted(
                r.round, params, metrics, train, aggregate.count, len(r.selected), aggregate.num_examples, duration,
                missing,
            )
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self) -> SessionResult:
        """Run the session to its end; raises ``SessionFailed`` with a reason if it cannot finish."""
        if self._next_round > self.config.rounds:
            return self._result()
        self._registration_deadline = self.bus.call_later(self.config.registration_timeout_s, ev.RegistrationDeadline())
        if self.config.heartbeat_timeout_s or self.config.heartbeat_interval_s:
            self._schedule_heartbeat_check()
        receiver = asyncio.create_task(self._receive(), name="coordinator-receive")
        try:
            await self.bus.run()
        finally:
            for t in (self._registration_deadline, self._heartbeat_timer):
                if t is not None:
                    t.cancel()
            await stop_tasks([receiver, self._loop], owner="coordinator")
            if self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
        return self._result()

    def _result(self) -> SessionResult:
        rounds = min(self._next_round - 1, self.config.rounds)
        sid, best = self.config.session_id, self.best
        return SessionResult(sid, self.params, rounds, self._history, best.round, best.key_metric, self._stopped_early)

    async def start_session(self) -> None:
        """Enough participants: enable them and start the round loop (a membership calls this)."""
        if self.down.started:
            return
        self.down.started = True
        if self._registration_deadline is not None:
            self._registration_deadline.cancel()
        if self.population is None:
            participants = listed = self.registry.online()
        else:  # counted, not listed: its host answers for every client
            participants, listed = [self.population.host], []
        size = len(listed) if self.population is None else self.population.size
        self.bus.emit(
            ev.SessionStarted(self.config.session_id, self.config.model_dump(), listed, self._next_round, size)
        )
        await self.enable(participants)
        self._loop = asyncio.create_task(self._guarded(self._rounds()), name="coordinator-rounds")

    async def enable(self, participants: list[str]) -> None:
        body = EnableBody.model_construct(config=self.config.model_dump(mode="json"), spec=self.params.spec.to_json())
        await self.down.enable(participants, body)

    async def _guarded(self, loop: Coroutine[Any, Any, None]) -> None:
        try:
            await loop
        except Exception as exc:  # a bug (an aggregation that raised): the run ends with it
            self.bus.stop(exc)

    async def _receive(self) -> None:
        async for message in self.transport:
            if message.envelope.session_id not in ("", self.config.session_id):
                log.warning("dropped %s from %s for another session", message.kind, message.sender)
                continue
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return

    async def _on_message(self, event: ev.MessageIn) -> None:
        if self._secure is not None and await self._secure.on_message(event.message):
            return
        if self._async is None or not await self._async.on_message(event.message):
            await self.down.on_message(event.message, self.membership)

    def _fail(self, reason: str) -> None:
        log.error("session %s failed: %s", self.config.session_id, reason)
        self.bus.emit(ev.SessionFailedEvent(self.config.session_id, reason))
        self.bus.stop(SessionFailed(reason))

    async def _on_failed(self, event: ev.SessionFailedEvent) -> None:
        # Handled in the bus's final drain: tell every client now, so that none waits for a
        # session that is over (a networked client would otherwise wait out its own timeout).
        await self.down.stop_all(event.reason)

    async def _on_cancel_requested(self, event: ev.CancelRequested) -> None:
        if self.bus.stopped:  # it ended meanwhile: its own outcome stands
            return
        log.warning("session %s cancelled: %s", self.config.session_id, event.reason)
        await self.down.stop_all(event.reason)  # every client known, OFFLINE ones included
        self.bus.emit(ev.SessionCancelled(self.config.session_id, event.reason))
        self.bus.stop(SessionCancelled(event.reason))

    async def _finish(self) -> None:
        await self.down.stop_all()
        last = self._history[-1] if self._history else {}
        rounds = self._next_round - 1
        self.bus.emit(ev.SessionCompleted(self.config.session_id, rounds, self.params, last, self._stopped_early))
        self.bus.stop()

    # -- timers --------------------------------------------------------------------------------------
    def _on_registration_deadline(self, _: ev.RegistrationDeadline) -> None:
        if not self.down.started:
            self._fail(self.membership.not_ready_reason())

    def _schedule_heartbeat_check(self) -> None:
        interval = self.config.heartbeat_interval_s or (self.config.heartbeat_timeout_s or 10.0) / 2
        self._heartbeat_timer = self.bus.call_later(interval, ev.HeartbeatCheck())

    async def _on_heartbeat_check(self, _: ev.HeartbeatCheck) -> None:
        self._schedule_heartbeat_check()
        await self.down.check_liveness()


def _population(coordinator: Coordinator) -> Membership:
    assert isinstance(coordinator.down, PopulationDownstream)
    return PopulationMembership(coordinator.down, on_ready=coordinator.start_session)


def _clients(coordinator: Coordinator) -> Membership:
    async def enable_one(participant: str) -> None:
        await coordinator.enable([participant])

    return ClientMembership(coordinator.down, on_late_joiner=enable_one, on_ready=coordinator.start_session)
