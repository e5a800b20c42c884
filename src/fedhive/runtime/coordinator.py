"""The coordinator of one session: registration, rounds, quorum and deadlines (docs/architecture.md, "Rounds").

It speaks only to its ``Transport`` and its ``EventBus``: it never knows whether its clients are
coroutines in the same process or processes on other continents. All state changes happen in bus
handlers on the event loop; aggregation, evaluation and validation of large payloads run in a
worker thread and come back as events. Every wait has a deadline with a readable outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fedhive.app.learner import Evaluator
from fedhive.core.envelope import Deferred, Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.best_round import BestRound
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.claim_keeper import give_back
from fedhive.runtime.hosted import HostDirectory, fold_members
from fedhive.runtime.inline_executor import InlineExecutor, run_job
from fedhive.runtime.payloads import (
    OFFLOAD_BYTES,
    body_int,
    body_metrics,
    opt_float,
    opt_int,
    payload_params,
    payload_size,
)
from fedhive.runtime.registry import ClientRegistry, PeerStatus
from fedhive.runtime.round_state import RetryRound, RoundState, shortfall_reason
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy, Update
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.coordinator")

COORDINATOR_ID = "coordinator"
MAX_EXAMPLES = 10**9


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
    ) -> None:
        self.config = config
        self.transport = transport
        self.bus = bus or EventBus()
        self.registry = registry or ClientRegistry(heartbeat_timeout_s=config.heartbeat_timeout_s)
        self.strategy = strategy or parse_strategy(config.strategy)
        self.params = initial_params
        self.spec = initial_params.spec
        self._evaluator = evaluator
        # Every TRAIN names the app (and its code digest): a site trains only the app it installed.
        self._app = {"app": config.app, "app_digest": config.app_digest}
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="fedhive-aggregate")
        self._next_round = start_round
        self._round: RoundState | None = None
        self._session_clients: list[str] = []
        self._session_index: dict[str, int] | None = None  # client -> position in sorted order; lazy
        self._started = False
        self._history: list[dict[str, float]] = list(history)
        self.best = BestRound(config.key_metric, config.mode, config.patience)
        self._stopped_early = False
        self.best.replay(self._history)
        self._registration_deadline: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._hosts = HostDirectory()  # clients that a ClientHost answers for (runtime.hosted)
        self._reconnects_seen = transport.reconnects
        self._wire_handlers()

    # -- lifecycle -----------------------------------------------------------------------------
    def _wire_handlers(self) -> None:
        b = self.bus
        b.on(ev.MessageIn, self._on_message)
        b.on(ev.RegistrationDeadline, self._on_registration_deadline)
        b.on(ev.RoundDeadline, self._on_round_deadline)
        b.on(ev.HeartbeatCheck, self._on_heartbeat_check)
        b.on(ev.RoundAggregated, self._on_round_aggregated)
        b.on(RetryRound, self._on_retry_round)
        b.on(ev.SessionFailedEvent, self._on_failed)

    async def run(self) -> SessionResult:
        """Run the session to its end; raises ``SessionFailed`` with a reason if it cannot finish."""
        if self._next_round > self.config.rounds:
            return SessionResult(self.config.session_id, self.params, self.config.rounds, self._history)
        self._registration_deadline = self.bus.call_later(self.config.registration_timeout_s, ev.RegistrationDeadline())
        if self.config.heartbeat_timeout_s or self.config.heartbeat_interval_s:
            self._schedule_heartbeat_check()
        receiver = asyncio.create_task(self._receive(), name="coordinator-receive")
        try:
            await self.bus.run()
        finally:
            receiver.cancel()
            for t in (self._registration_deadline, self._heartbeat_timer):
                if t is not None:
                    t.cancel()
            if self._round and self._round.deadline:
                self._round.deadline.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            if self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
        return SessionResult(
            self.config.session_id,
            self.params,
            self._next_round - 1,
            self._history,
            self.best.round,
            self.best.key_metric,
            self._stopped_early,
        )

    async def _receive(self) -> None:
        async for message in self.transport:
            if message.envelope.session_id not in ("", self.config.session_id):
                log.warning("dropped %s from %s for another session", message.kind, message.sender)
                continue
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return

    def _fail(self, reason: str) -> None:
        log.error("session %s failed: %s", self.config.session_id, reason)
        self.bus.emit(ev.SessionFailedEvent(self.config.session_id, reason))
        self.bus.stop(SessionFailed(reason))

    async def _on_failed(self, event: ev.SessionFailedEvent) -> None:
        # Handled in the bus's final drain: tell every client now, so that none waits for a
        # session that is over (a networked client would otherwise wait out its own timeout).
        alive = [c.client_id for c in self.registry.all() if c.status is not PeerStatus.OFFLINE]
        body = {"reason": event.reason[:1000]}
        await self._send_all(
            alive, lambda _c: make(Kind.STOP, COORDINATOR_ID, session_id=self.config.session_id, body=body)
        )

    # -- messages ----------------------------------------------------------------------------------
    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        handler = {
            Kind.REGISTER: self._on_register,
            Kind.HEARTBEAT: self._on_heartbeat,
            Kind.UPDATE: self._on_update,
            Kind.PARTIAL: self._on_hosted_partial,
            Kind.ERROR: self._on_client_error,
            Kind.DONE: self._on_done,
        }.get(msg.kind)
        if handler is None:
            log.warning("ignored unexpected %s message from %s", msg.kind, msg.sender)
            return
        try:
            await handler(msg)
        except FedhiveError as exc:
            log.warning("rejected %s from %s: %s", msg.kind, msg.sender, exc)
            if msg.kind is Kind.UPDATE:
                self._reject_update(msg, str(exc))

    async def _on_register(self, msg: Message) -> None:
        num_examples = body_int(msg.envelope.body, "num_examples", low=0, high=MAX_EXAMPLES)
        labels = msg.envelope.body.get("label_counts") or {}
        self._hosts.note_registration(msg.sender, msg.envelope.body)
        previous = self.registry.register(msg.sender, num_examples, labels if isinstance(labels, dict) else {})
        if previous is not PeerStatus.ONLINE:
            self.bus.emit(ev.ClientStatusChanged(msg.sender, PeerStatus.ONLINE, previous))
        # The interval tells a networked client how often to beat, and how long a silence from us
        # means that we are gone.
        body = {"heartbeat_interval_s": self.config.heartbeat_interval_s}
        reply = make(Kind.REGISTERED, COORDINATOR_ID, session_id=self.config.session_id, body=body)
        await self._send(msg.sender, reply)
        if self._started:
            await self._enable([msg.sender])  # a late joiner takes part from the next round
            r = self._round
            waiting = r is not None and msg.sender in r.chosen and msg.sender not in r.accepted
            if r and not r.closing and waiting and msg.sender not in r.failed:
                # It restarted mid-round and lost the TRAIN it was sent: send it again, so that it
                # can still count in this round instead of leaving it to wait for its deadline.
                await self._send_train([msg.sender], r)
        elif self.registry.online_count() >= self.config.min_clients:
            await self._start_session()

    async def _on_heartbeat(self, msg: Message) -> None:
        if msg.sender not in self.registry:
            return
        self._mark_seen(msg.sender)
        body = msg.envelope.body
        info = self.registry.get(msg.sender)
        assert info is not None
        info.epoch, info.epochs = opt_int(body.get("epoch")), opt_int(body.get("epochs"))
        info.loss, info.accuracy = opt_float(body.get("loss")), opt_float(body.get("accuracy"))
        self.bus.emit(
            ev.HeartbeatReceived(
                msg.sender,
                str(body.get("status", "")),
                msg.envelope.round,
                info.epoch,
                info.epochs,
                info.loss,
                info.accuracy,
            )
        )

    def _mark_seen(self, client_id: str) -> None:
        if self.registry.seen(client_id) is PeerStatus.OFFLINE:
            status = PeerStatus.TRAINING if client_id in self._session_clients else PeerStatus.ONLINE
            self.registry.set_status(client_id, status)
            self.bus.emit(ev.ClientStatusChanged(client_id, status, PeerStatus.OFFLINE))

    async def _on_done(self, msg: Message) -> None:
        log.info("client %s is done", msg.sender)

    async def _on_client_error(self, msg: Message) -> None:
        reason = str(msg.envelope.body.get("reason", "unspecified"))[:500]
        log.warning("client %s reports an error in round %d: %s", msg.sender, msg.envelope.round, reason)
        r = self._waiting_for(msg)
        if r is not None:
            r.failed[msg.sender] = f"reported an error: {reason}"
            self._maybe_close()

    async def _on_update(self, msg: Message) -> None:
        self._hold_claim(msg)
        r = self._round
        env = msg.envelope
        if msg.sender in self.registry:
            self._mark_seen(msg.sender)
        if r is None or r.closing or env.round != r.round or env.body.get("attempt", 0) != r.attempt:
            log.info(
                "dropped late update from %s for round %d (now round %s)",
                msg.sender,
                env.round,
                r.round if r else "none",
            )
            self.bus.emit(ev.UpdateRejected(env.round, msg.sender, "late"))
            return
        if msg.sender not in r.chosen:
            self._reject_update(msg, "sender was not selected for this round")
            return
        if msg.sender in r.accepted or msg.sender in r.failed:
            self._reject_update(msg, "duplicate update")
            return
        num_examples = body_int(env.body, "num_examples", low=1, high=MAX_EXAMPLES)
        metrics = body_metrics(env.body)
        nbytes = payload_size(msg)
        what = f"update from {msg.sender}"
        max_bytes = self.config.max_update_bytes
        decode = functools.partial(payload_params, compression=self.config.compression, base=self.params)

        def fold() -> None:
            # Fetch (a deferred claim check), decode, validate and fold in one go: the update's
            # bytes live only for this call, so the coordinator holds one update at a time.
            params = decode(msg, self.spec, max_bytes=max_bytes, what=what)
            r.aggregator.add(Update(msg.sender, params, num_examples, metrics))

        if nbytes > OFFLOAD_BYTES:
            await run_job(self._executor, fold)
        else:
            fold()
        if r is not self._round or r.closing:  # the round moved on while we aggregated
            return
        r.accepted.add(msg.sender)
        self.bus.emit(ev.UpdateAccepted(r.round, msg.sender, num_examples, metrics, nbytes))
        self._maybe_close()

    async def _on_hosted_partial(self, msg: Message) -> None:
        """A ``ClientHost``'s answer for a chunk of its clients (``runtime.hosted``): each member
        is accepted and each failure recorded as if it had come in a message of its own."""
        self._hold_claim(msg)
        r, env = self._round, msg.envelope
        members, failures = self._hosts.answer_of(msg)
        named = [m.client_id for m in members] + [c for c, _ in failures]
        if r is None or r.closing or env.round != r.round or env.body.get("attempt", 0) != r.attempt:
            log.info("dropped late partial from host %s for round %d", msg.sender, env.round)
            for c in named:
                self.bus.emit(ev.UpdateRejected(env.round, c, "late"))
            return
        if any(c not in r.chosen or c in r.accepted or c in r.failed for c in named):
            raise ProtocolError("a host's partial names clients this round does not wait for")
        for c, reason in failures:
            log.warning("rejected update from %s in round %d: %s", c, r.round, reason)
            self.bus.emit(ev.UpdateRejected(r.round, c, reason))
            r.failed[c] = f"sent no valid update: {reason}"
        if members:
            nbytes = payload_size(msg)
            fold = functools.partial(
                fold_members, r.aggregator, msg, members, self.spec, max_update_bytes=self.config.max_update_bytes
            )
            try:
                await run_job(self._executor, fold) if nbytes > OFFLOAD_BYTES else fold()
            except FedhiveError as exc:
                for m in members:
                    self.bus.emit(ev.UpdateRejected(r.round, m.client_id, str(exc)))
                    r.failed[m.client_id] = f"sent an invalid update: {exc}"
                raise
            if r is not self._round or r.closing:  # the round moved on while we aggregated
                return
            # Counted as the UPDATE each member's own node would have sent (hosts do not compress),
            # so that byte figures mean the same with and without a host.
            size = self.params.nbytes
            for m in members:
                r.accepted.add(m.client_id)
                self.bus.emit(ev.UpdateAccepted(r.round, m.client_id, m.num_examples, m.metrics, size))
        self._maybe_close()

    def _hold_claim(self, msg: Message) -> None:
        """A claim-checked payload goes back to the store when its round is aggregated, or at once
        if no round waits for it: without this, the store would grow by every update of every round."""
        p = msg.payload
        if not isinstance(p, Deferred):
            return
        r = self._round
        if r is not None and not r.closing and msg.envelope.round == r.round:
            r.claims.append(p)
        else:
            self._give_back([p])

    def _give_back(self, claims: list[Deferred]) -> None:
        give_back(self._executor, claims)

    def _reject_update(self, msg: Message, reason: str) -> None:
        log.warning("rejected update from %s in round %d: %s", msg.sender, msg.envelope.round, reason)
        self.bus.emit(ev.UpdateRejected(msg.envelope.round, msg.sender, reason))
        r = self._waiting_for(msg)
        if r is not None and reason != "duplicate update":
            r.failed[msg.sender] = f"sent an invalid update: {reason}"
            self._maybe_close()

    def _waiting_for(self, msg: Message) -> RoundState | None:
        """The current round if it still waits for an answer from this message's sender."""
        r = self._round
        if r and not r.closing and msg.envelope.round == r.round and msg.sender in r.chosen:
            return None if msg.sender in r.accepted or msg.sender in r.failed else r
        return None

    # -- session and rounds --------------------------------------------------------------------
    async def _start_session(self) -> None:
        self._started = True
        if self._registration_deadline is not None:
            self._registration_deadline.cancel()
        clients = self.registry.online()
        self.bus.emit(ev.SessionStarted(self.config.session_id, self.config.model_dump(), clients, self._next_round))
        await self._enable(clients)
        await self._start_round(attempt=0)

    async def _enable(self, clients: list[str]) -> None:
        body = {"config": self.config.model_dump(mode="json"), "spec": self.spec.to_json()}
        known = set(self._session_clients)  # a set: with 1000 clients a list scan per client is O(n^2)
        for c in clients:
            if c not in known:
                known.add(c)
                self._session_clients.append(c)
                self._session_index = None
            previous = self.registry.set_status(c, PeerStatus.TRAINING)
            if previous is not None:
                self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.TRAINING, previous))
        await self._send_all(
            clients, lambda c: make(Kind.ENABLE, COORDINATOR_ID, session_id=self.config.session_id, body=body)
        )

    async def _start_round(self, attempt: int) -> None:
        rnd = self._next_round
        if self._session_index is None:  # built once per change of membership, not every round
            self._session_index = {c: i for i, c in enumerate(sorted(self._session_clients))}
        members = self._session_index
        online = [c for c in self.registry.online() if c in members]
        if len(online) < self.config.min_clients:
            self._fail(
                f"round {rnd}: only {len(online)} clients are ONLINE, fewer than min_clients={self.config.min_clients}"
            )
            return
        rng = np.random.default_rng([self.config.seed, rnd, attempt])
        k = self.config.selection_size(len(online))
        selected = sorted(rng.choice(online, size=k, replace=False).tolist()) if k < len(online) else online
        r = RoundState(rnd, attempt, selected, time.monotonic(), self.strategy.aggregator(self.params))
        r.index = members
        r.deadline = self.bus.call_later(self.config.round_timeout_s, ev.RoundDeadline(rnd, attempt))
        self._round = r
        self.bus.emit(ev.RoundStarted(rnd, attempt, selected))
        failed = await self._send_train(selected, r)
        for c in failed:
            r.failed.setdefault(c, "could not be reached")
        self._maybe_close()

    def _fit(self, client_id: str, r: RoundState) -> dict[str, object]:
        # The strategy may ask for client-side settings (FedProx's proximal term).
        return {**self.config.fit_config(r.round, r.index[client_id]).to_json(), **self.strategy.client_config()}

    def _train_message(self, client_id: str, r: RoundState) -> Message:
        body = {"fit": self._fit(client_id, r), "attempt": r.attempt, **self._app}
        return make(
            Kind.TRAIN, COORDINATOR_ID, session_id=self.config.session_id, round=r.round, body=body, payload=self.params
        )

    async def _send_train(self, clients: list[str], r: RoundState) -> list[str]:
        """TRAIN to each client, or one TRAIN per host for hosted clients; returns those that
        could not be reached."""
        direct, hosted = self._hosts.split(clients)
        failed = await self._send_all(direct, lambda c: self._train_message(c, r)) if direct else []
        sid = self.config.session_id
        for host, members in hosted.items():
            # One fit config for all, and each client's own seed: what ``_fit`` would give each.
            seeds = [{"client": c, "seed": self.config.client_seed(r.round, r.index[c])} for c in members]
            body = {"attempt": r.attempt, "fit": self._fit(members[0], r), "clients": seeds, **self._app}
            train = make(Kind.TRAIN, COORDINATOR_ID, session_id=sid, round=r.round, body=body, payload=self.params)
            if not await self._send(host, train):
                failed += members
        return failed

    def _maybe_close(self) -> None:
        r = self._round
        if r and not r.closing and r.answered() >= len(r.selected):
            self._close_round()

    def _on_round_deadline(self, event: ev.RoundDeadline) -> None:
        r = self._round
        if r and not r.closing and (r.round, r.attempt) == (event.round, event.attempt):
            self._close_round()

    def _close_round(self) -> None:
        r = self._round
        assert r is not None
        r.closing = True
        if r.deadline:
            r.deadline.cancel()
        missing = [c for c in r.selected if c not in r.accepted and c not in r.failed]
        for c in missing:
            log.warning(
                "round %d: no update from %s before the %.0f s deadline", r.round, c, self.config.round_timeout_s
            )
        need = self.config.quorum_size(len(r.selected))
        if len(r.accepted) >= need:
            if isinstance(self._executor, InlineExecutor):  # done at once: no need to hear back
                self._aggregation_done(self._executor.submit(self._aggregate, r), r)
            else:
                fut = asyncio.get_running_loop().run_in_executor(self._executor, self._aggregate, r)
                fut.add_done_callback(lambda f: self._aggregation_done(f, r))
            self._give_back(r.claims)  # queued behind the aggregation
            return
        self._give_back(r.claims)
        reason = shortfall_reason(r, need, missing, self.config.round_timeout_s)
        if r.attempt < self.config.max_round_retries:
            log.warning("round %d attempt %d failed (%s); retrying", r.round, r.attempt + 1, reason)
            self.bus.emit(ev.RoundRetried(r.round, r.attempt, reason))
            self.bus.emit(RetryRound(r.attempt + 1))
        else:
            self._fail(f"{reason}; gave up after {r.attempt + 1} attempts")

    async def _on_retry_round(self, event: RetryRound) -> None:
        await self._start_round(event.attempt)

    def _aggregate(self, r: RoundState) -> ev.RoundAggregated:
        aggregate = r.aggregator.result()
        params = self.strategy.apply(self.params, aggregate, r.round)
        evaluation = self._evaluator.evaluate(params) if self._evaluator else None
        return ev.RoundAggregated(r.round, r.attempt, params, aggregate, evaluation)

    def _aggregation_done(
        self, fut: asyncio.Future[ev.RoundAggregated] | concurrent.futures.Future[ev.RoundAggregated], r: RoundState
    ) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.bus.stop(exc)
        else:
            self.bus.emit(fut.result())

    async def _on_round_aggregated(self, event: ev.RoundAggregated) -> None:
        r = self._round
        assert r is not None and r.round == event.round
        self.params = event.params
        train = event.aggregate.metrics
        if event.evaluation is not None:
            metrics = dict(event.evaluation.metrics)
        else:
            metrics = {k: train[k] for k in ("loss", "accuracy") if k in train}
        metrics.update(self.strategy.round_metrics())  # e.g. DP-FedAvg's epsilon spent so far
        self._history.append(metrics)
        if self.best.offer(r.round, metrics):
            assert self.best.key_metric is not None and self.best.value is not None
            self.bus.emit(ev.BestModel(r.round, self.best.key_metric, self.best.value, event.params))
        self.bus.emit(
            ev.RoundCompleted(
                r.round,
                event.params,
                metrics,
                train,
                event.aggregate.count,
                len(r.selected),
                event.aggregate.num_examples,
                time.monotonic() - r.started,
                sorted(set(r.selected) - r.accepted),
            )
        )
        self._round = None
        self._next_round += 1
        if self.best.exhausted(r.round) and self._next_round <= self.config.rounds:
            log.info(
                "session %s: no better %s for %d rounds since round %d; stopping early",
                self.config.session_id,
                self.best.key_metric,
                self.config.patience,
                self.best.round,
            )
            self._stopped_early = True
            await self._finish(stopped_early=True)
        elif self._next_round > self.config.rounds:
            await self._finish()
        else:
            await self._start_round(attempt=0)

    async def _finish(self, *, stopped_early: bool = False) -> None:
        await self._send_all(
            list(self._session_clients), lambda c: make(Kind.STOP, COORDINATOR_ID, session_id=self.config.session_id)
        )
        for c in self._session_clients:
            info = self.registry.get(c)
            if info is None or info.status is not PeerStatus.TRAINING:
                continue  # OFFLINE clients stay OFFLINE until they are heard from
            previous = self.registry.set_status(c, PeerStatus.ONLINE)
            if previous is not None:
                self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.ONLINE, previous))
        self.bus.emit(
            ev.SessionCompleted(
                self.config.session_id,
                self._next_round - 1,
                self.params,
                self._history[-1] if self._history else {},
                stopped_early,
            )
        )
        self.bus.stop()

    # -- timers --------------------------------------------------------------------------------------
    def _on_registration_deadline(self, _: ev.RegistrationDeadline) -> None:
        if not self._started:
            n = self.registry.online_count()
            self._fail(
                f"only {n} of the {self.config.min_clients} required clients registered within "
                f"{self.config.registration_timeout_s:.0f} s"
            )

    def _schedule_heartbeat_check(self) -> None:
        interval = self.config.heartbeat_interval_s or (self.config.heartbeat_timeout_s or 10.0) / 2
        self._heartbeat_timer = self.bus.call_later(interval, ev.HeartbeatCheck())

    async def _on_heartbeat_check(self, _: ev.HeartbeatCheck) -> None:
        self._schedule_heartbeat_check()
        if not self.transport.connected:
            return  # our own link is down (a broker restart): silence is no sign that a client is gone
        if self.transport.reconnects != self._reconnects_seen:
            # It was down since we last looked (perhaps while this loop waited on a send): everyone
            # gets a full timeout to be heard again.
            self._reconnects_seen = self.transport.reconnects
            self.registry.refresh_all()
        for c in self.registry.expire():
            self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.OFFLINE, None))
            r = self._round
            if r and not r.closing and c in r.chosen and c not in r.accepted:
                r.failed.setdefault(c, f"went OFFLINE (no heartbeat for {self.config.heartbeat_timeout_s:.0f} s)")
                self._maybe_close()
        if self.config.heartbeat_interval_s:
            # Our own heartbeat: a networked client that hears nothing from us for long gives up
            # instead of waiting forever for a coordinator that crashed.
            body = {"status": "RUNNING" if self._started else "PENDING"}
            alive = [c.client_id for c in self.registry.all() if c.status is not PeerStatus.OFFLINE]
            await self._send_all(
                alive, lambda _c: make(Kind.HEARTBEAT, COORDINATOR_ID, session_id=self.config.session_id, body=body)
            )

    # -- sending ------------------------------------------------------------------------------------
    async def _send(self, to: str, message: Message) -> bool:
        try:
            await self.transport.send(to, message)
            return True
        except TransportError as exc:
            log.warning("could not send %s to %s: %s", message.kind, to, exc)
            return False

    async def _send_all(self, clients: list[str], build: Callable[[str], Message]) -> list[str]:
        """Send to every client concurrently; returns those that could not be reached."""
        results = await self.transport.send_many([(c, build(c)) for c in clients])
        failed = []
        for c, error in zip(clients, results, strict=True):
            if error is not None:
                log.warning("could not reach %s: %s", c, error)
                failed.append(c)
        return failed
