"""A combiner: a coordinator towards its clients, a client towards the coordinator (nested FedAvg).

It owns what a coordinator owns towards its participants (a ``Downstream`` and a
``ClientMembership``) but runs no round loop of its own: the coordinator's ``train`` starts a
sub-round on the coordinator's model that ends with one ``partial`` upstream (``runtime.partials``),
or with the raw updates for a strategy that cannot merge. Its session settings come from the
coordinator's ``enable``: it starts with an id, a secret and a broker address.

It beats towards the coordinator like a client; ``upstream_timeout_s`` of the coordinator's
silence ends it. A sub-round that misses quorum is reported as an ``error``: the coordinator, which
sees all combiners, decides whether the round goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING

from fedhive.core.bodies import (
    MAX_REASON,
    EnableBody,
    ErrorBody,
    EvaluateBody,
    HeartbeatBody,
    Member,
    RegisterBody,
    StopBody,
    TrainBody,
    parse_body,
)
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.client import read_enable
from fedhive.runtime.client_membership import ClientMembership
from fedhive.runtime.coordinator import SessionResult
from fedhive.runtime.downstream import COORDINATOR_ID, Downstream
from fedhive.runtime.evaluation import evaluation_body
from fedhive.runtime.partials import CollectRaw, ForwardRaw, nobody_drawn_message, partial_message, raw_message
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.round_state import RoundState, shortfall_reason
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.sampling import ClientSampling
from fedhive.transports.base import Transport

if TYPE_CHECKING:
    from fedhive.secagg.node_round import SecureRounds

log = logging.getLogger("fedhive.combiner")

# The coordinator selected this combiner: it trains all its clients, and a failed sub-round is
# reported upstream (where the round's fate is decided), never retried here.
_SUB_ROUND = {"min_clients": 1, "fraction": 1.0, "fraction_evaluate": 1.0, "max_clients": None, "max_round_retries": 0}


class Combiner:
    def __init__(
        self,
        node_id: str,
        transport: Transport,
        *,
        upstream_id: str = COORDINATOR_ID,
        heartbeat_interval_s: float = 5.0,
        heartbeat_timeout_s: float = 20.0,
        upstream_timeout_s: float = 60.0,
        exact_partials: bool = False,
        bus: EventBus | None = None,
        executor: Executor | None = None,
    ) -> None:
        # Until the coordinator's ENABLE says otherwise: accept clients, run no rounds.
        self.config = SessionConfig(
            session_id="pending",
            min_clients=1,
            heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            registration_timeout_s=10**9,
        )
        self.node_id = node_id
        self.transport = transport
        self.bus = bus or EventBus()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"fedhive-{node_id}")
        self.down = Downstream(self.config, transport, self.bus, self._executor, sender_id=node_id)
        self.membership = ClientMembership(self.down, on_late_joiner=self._enable_one, on_ready=self._no_op)
        self.upstream_id = upstream_id
        self.upstream_timeout_s = upstream_timeout_s
        self.exact_partials = exact_partials  # float64 sums on the wire: see runtime.partials
        self.strategy: Strategy = parse_strategy(self.config.strategy)
        self.spec: ParamSpec | None = None
        self._enabled = False
        self._upstream_registered = False
        self._upstream_heard = time.monotonic()
        self._reported: tuple[int, int] | None = None
        self._sub_round: asyncio.Task[None] | None = None
        self._sub_evaluation: asyncio.Task[None] | None = None
        self._rounds_combined: set[int] = set()
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._secure: SecureRounds | None = None  # the session's secure aggregation, from its ENABLE
        self._sampling: ClientSampling | None = None  # the strategy's draw of our clients (DP), from its ENABLE
        self.bus.on(ev.MessageIn, self._on_message)
        self.bus.on(ev.HeartbeatCheck, self._on_heartbeat_check)
        self.bus.on(ev.SessionFailedEvent, self._on_failed)

    async def run(self) -> SessionResult:
        await self._report()
        self._schedule_heartbeat_check()
        receiver = asyncio.create_task(self._receive(), name=f"{self.node_id}-receive")
        try:
            await self.bus.run()
        finally:
            if self._heartbeat_timer is not None:
                self._heartbeat_timer.cancel()
            await stop_tasks([receiver, self._sub_round, self._sub_evaluation], owner=f"combiner {self.node_id}")
            if self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
        return SessionResult(self.config.session_id, self.down.params, len(self._rounds_combined), [])

    # -- one sub-round: the coordinator's TRAIN, our clients' answers, one partial upstream ------------
    async def _combine(self, rnd: int, attempt: int, params: Params) -> None:
        # With secure aggregation our clients are a group of their own: we learn only their sum.
        train_round = self._secure.train_round if self._secure is not None else self.down.train_round
        aggregator = self.strategy.aggregator(params)
        r = await train_round(rnd, attempt, params, aggregator, self.membership, self._fit, self._sampling)
        if isinstance(r, str):
            await self._error(rnd, attempt, r)
            return
        if not r.selected:  # our Poisson draw took none of our clients: an answer all the same
            await self._answer(rnd, nobody_drawn_message(self.node_id, self.config.session_id, rnd, attempt))
            self.down.collector.close(r)
            return
        need = self.config.quorum_size(len(r.selected))
        if len(r.accepted) < need:
            failure = shortfall_reason(r, need, r.missing(), self.config.round_timeout_s)
            log.warning("%s: %s", self.node_id, failure)
            await self._error(rnd, attempt, failure)
        else:
            await self._answer(rnd, self._partial(r))
        self.down.collector.close(r)  # sent: forwarded raw updates have been read for the last time

    async def _answer(self, rnd: int, partial: Message) -> None:
        """Send the round's answer upstream. The round counts as combined from the moment its answer
        is on its way: the send returns when the broker confirms it, and by then the coordinator
        may have used it, ended the session and stopped us (or sent the next round's TRAIN, which
        cancels this one); a send that fails takes the count back."""
        self._rounds_combined.add(rnd)
        if not await self.down.send(self.upstream_id, partial):
            self._rounds_combined.discard(rnd)

    def _partial(self, r: RoundState) -> Message:
        agg = r.aggregator
        # Each client behind us, so that the coordinator's records name clients, not only combiners.
        members = [Member(c, n, m) for c, (n, m) in sorted(r.reports.items())]
        if isinstance(agg, CollectRaw):
            return raw_message(self.node_id, self.config.session_id, r.round, r.attempt, agg.updates, members=members)
        exact = self.exact_partials or self._secure is not None  # a secure sum keeps its fixed-point bound
        return partial_message(
            self.node_id, self.config.session_id, r.round, r.attempt, agg.partial(), sorted(r.accepted),
            spec=self.down.params.spec, exact=exact, members=members,
        )  # fmt: skip

    def _fit(self, client_id: str, r: RoundState) -> TrainBody:
        fit = {**self.config.fit_config(r.round, r.index[client_id]).to_json(), **self.strategy.client_config()}
        return TrainBody.model_construct(fit=fit, app=self.config.app, app_digest=self.config.app_digest)

    # -- messages -----------------------------------------------------------------------------------
    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        if msg.sender != self.upstream_id:
            await self._from_client(msg)
            return
        self._upstream_heard = time.monotonic()
        try:
            if msg.kind is Kind.REGISTERED:
                self._upstream_registered = True
            elif msg.kind is Kind.ENABLE:
                self._on_enable(msg)
            elif msg.kind is Kind.TRAIN:
                await self._on_train(msg)
            elif msg.kind is Kind.EVALUATE:
                self._on_evaluate(msg)
            elif msg.kind is Kind.STOP and (reason := parse_body(StopBody, msg).reason) is not None:
                self._fail(f"the coordinator ended the session: {reason}")
            elif msg.kind is Kind.STOP:
                await self._finish()
        except FedhiveError as exc:
            log.warning("%s: cannot act on %s from the coordinator: %s", self.node_id, msg.kind, exc)
            await self._error(msg.envelope.round, 0, str(exc))

    async def _from_client(self, msg: Message) -> None:
        if self._secure is not None and await self._secure.on_message(msg):
            return
        await self.down.on_message(msg, self.membership)
        if msg.kind is Kind.REGISTER:
            await self._report()

    def _on_enable(self, msg: Message) -> None:
        upstream, self.spec = read_enable(msg)
        # Our clients get the coordinator's settings with our own liveness rules (_SUB_ROUND).
        # ... but never quicker to give a client up than the session itself: ten clients importing
        # torch at once on two cores sent no heartbeat for 20 s (the combiner's default), and
        # their combiner dropped them all while the session allowed 60.
        timeout = max(self.config.heartbeat_timeout_s or 0.0, upstream.heartbeat_timeout_s or 0.0) or None
        own = {"heartbeat_interval_s": self.config.heartbeat_interval_s, "heartbeat_timeout_s": timeout}
        self.config = upstream.model_copy(update={**_SUB_ROUND, **own})
        self.down.config = self.config
        upstream_strategy = parse_strategy(upstream.strategy)
        self.strategy = upstream_strategy if upstream_strategy.mergeable else ForwardRaw()
        # DP-FedAvg's Poisson sampling: we draw our own clients, each at its rate (strategies/sampling.py).
        self._sampling = upstream_strategy.client_sampling()
        if self.config.secure_aggregation and self._secure is None:
            from fedhive.secagg.node_round import SecureRounds  # here: only its sessions need cryptography

            self._secure = SecureRounds(self.down, upstream_strategy)
        self._enabled = True

    async def _on_train(self, msg: Message) -> None:
        if not self._enabled or self.spec is None:
            raise ProtocolError("TRAIN before ENABLE")
        if not self.down.started:  # clients waited (ONLINE) for the coordinator's ENABLE
            self.down.started = True
            await self._enable(self.down.registry.online())
        env = msg.envelope
        attempt = parse_body(TrainBody, msg).attempt
        if not self.down.registry.online():
            raise ProtocolError(f"{self.node_id} has no clients ONLINE for round {env.round}")
        params = payload_params(msg, self.spec, max_bytes=self.config.max_update_bytes, what="global model")
        if self._sub_round is not None and not self._sub_round.done():
            self._sub_round.cancel()  # a new TRAIN supersedes an unfinished sub-round
        self._sub_round = asyncio.create_task(self._combine(env.round, attempt, params), name=f"{self.node_id}-round")

    def _on_evaluate(self, msg: Message) -> None:
        if not self._enabled or self.spec is None or not self.down.started:
            raise ProtocolError("EVALUATE before ENABLE and TRAIN")
        params = payload_params(msg, self.spec, max_bytes=self.config.max_update_bytes, what="global model")
        work = self._evaluate_clients(msg.envelope.round, params, parse_body(EvaluateBody, msg))
        self._sub_evaluation = asyncio.create_task(work, name=f"{self.node_id}-evaluate")

    async def _evaluate_clients(self, rnd: int, params: Params, body: EvaluateBody) -> None:
        """Our clients judge the model; their figures go up as they are (exact merging upstream)."""
        e = await self.down.evaluate_round(rnd, params, self.membership, body)
        answer = evaluation_body(list(e.results.values()), sorted(e.failed.items()))
        await self._upstream(Kind.EVALUATION, rnd, answer)

    async def _enable(self, clients: list[str]) -> None:
        spec = self.spec.to_json() if self.spec else []
        body = EnableBody.model_construct(config=self.config.model_dump(mode="json"), spec=spec)
        await self.down.enable(clients, body)

    async def _enable_one(self, client: str) -> None:
        if self._enabled:
            await self._enable([client])

    async def _no_op(self) -> None:
        return None  # clients wait (ONLINE) for the coordinator's ENABLE and TRAIN

    async def _receive(self) -> None:
        # The session id is only known from the coordinator's ENABLE, so the coordinator's own
        # messages pass whatever session they name; clients' messages are checked as usual.
        async for message in self.transport:
            session = message.envelope.session_id
            if message.sender != self.upstream_id and self._enabled and session not in ("", self.config.session_id):
                log.warning("%s: dropped %s from %s for another session", self.node_id, message.kind, message.sender)
                continue
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return

    # -- the end -------------------------------------------------------------------------------------
    async def _finish(self) -> None:
        await self.down.stop_all()
        self.bus.stop()

    def _fail(self, reason: str) -> None:
        log.error("%s: session %s failed: %s", self.node_id, self.config.session_id, reason)
        self.bus.emit(ev.SessionFailedEvent(self.config.session_id, reason))
        self.bus.stop(SessionFailed(reason))

    async def _on_failed(self, event: ev.SessionFailedEvent) -> None:
        await self.down.stop_all(event.reason)

    # -- upstream liveness -------------------------------------------------------------------------
    async def _report(self) -> None:
        """(Re-)register upstream with our current clients, so the coordinator knows our load."""
        online = self.down.registry.online()
        examples = sum(c.num_examples for c in self.down.registry.all() if c.client_id in online)
        if self._reported == (len(online), examples) and self._upstream_registered:
            return
        self._reported = (len(online), examples)
        body = RegisterBody.model_construct(role="combiner", clients=len(online), num_examples=examples)
        await self.down.send(self.upstream_id, make(Kind.REGISTER, self.node_id, body=body.to_body()))

    def _schedule_heartbeat_check(self) -> None:
        interval = self.config.heartbeat_interval_s or (self.config.heartbeat_timeout_s or 10.0) / 2
        self._heartbeat_timer = self.bus.call_later(interval, ev.HeartbeatCheck())

    async def _on_heartbeat_check(self, _: ev.HeartbeatCheck) -> None:
        self._schedule_heartbeat_check()
        await self.down.check_liveness()
        if time.monotonic() - self._upstream_heard > self.upstream_timeout_s:
            silence = f"{self.node_id}: no word from the coordinator for {self.upstream_timeout_s:.0f} s"
            self.bus.stop(SessionFailed(silence))
            return
        if not self._upstream_registered:
            self._reported = None
            await self._report()
        current = self.down.collector.current
        status = "TRAINING" if current else "ONLINE"
        beat = HeartbeatBody.model_construct(status=status, clients=self.down.registry.online_count())
        await self._upstream(Kind.HEARTBEAT, current.round if current else 0, beat.to_body())

    async def _error(self, round: int, attempt: int, reason: str) -> None:
        """This sub-round (or message) failed here: the coordinator decides what the round does."""
        error = ErrorBody.model_construct(reason=reason[:MAX_REASON], attempt=attempt)
        await self._upstream(Kind.ERROR, round, error.to_body())

    async def _upstream(self, kind: Kind, round: int, body: Mapping[str, object]) -> None:
        session = self.config.session_id if self._enabled else ""
        message = make(kind, self.node_id, session_id=session, round=round, body=dict(body))
        await self.down.send(self.upstream_id, message)
