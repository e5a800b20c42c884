"""A node's side towards its participants: who they are, whether they live, and one round with them.

Both nodes that run rounds — the coordinator (over clients, or over combiners in a hierarchical
session) and a combiner (over its clients) — own a ``Downstream``. It keeps the participants'
registry and heartbeats, sends to them, and runs the part of a round that is the same for both:

    r = await downstream.train_round(rnd, attempt, params, aggregator)

selects the participants, sends them TRAIN, and collects their answers until all have answered or
the round's deadline. Who the participants are and how they answer is a ``Membership`` (clients:
``runtime.client_membership``; combiners: ``runtime.hierarchy``), handed in, never subclassed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from fedhive.core.bodies import EnableBody, EvaluateBody, HeartbeatBody, StopBody, TrainBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import FedhiveError, ProtocolError, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.collect import Collector, CollectSettings
from fedhive.runtime.evaluation import EvalRound, read_evaluation
from fedhive.runtime.hosted import HostDirectory
from fedhive.runtime.registry import ClientRegistry, PeerStatus
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.update_limits import UpdateLimits
from fedhive.strategies.base import Aggregator
from fedhive.strategies.sampling import ClientSampling
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.coordinator")  # the node that runs rounds

COORDINATOR_ID = "coordinator"

FitFor = Callable[[str, RoundState], TrainBody]


class Membership(Protocol):
    """Who takes part in a node's rounds, and how they join and answer."""

    async def on_message(self, msg: Message) -> bool:
        """Handle a message about membership or an answer; False if it is not one of ours."""
        ...

    def ready(self) -> bool:
        """Enough participants to start the session."""
        ...

    def not_ready_reason(self) -> str: ...

    async def send_train(self, selected: list[str], r: RoundState, body: Callable[[str], TrainBody]) -> list[str]:
        """TRAIN to the selected; returns those that could not be reached."""
        ...

    async def send_evaluate(self, selected: list[str], e: EvalRound, body: EvaluateBody) -> list[str]:
        """EVALUATE to the selected; returns those that could not be reached."""
        ...

    def vouches(self, sender: str, client: str) -> bool:
        """Whether ``sender`` may report ``client``'s figures (itself, its host, its combiner)."""
        ...


class Downstream:
    def __init__(
        self,
        config: SessionConfig,
        transport: Transport,
        bus: EventBus,
        executor: Executor,
        *,
        registry: ClientRegistry | None = None,
        sender_id: str = COORDINATOR_ID,
    ) -> None:
        self.config = config
        self.transport = transport
        self.bus = bus
        self.registry = registry or ClientRegistry(heartbeat_timeout_s=config.heartbeat_timeout_s)
        self.sender_id = sender_id
        self.hosts = HostDirectory()  # clients that a ClientHost answers for (runtime.hosted)
        self.collector = Collector(bus, executor, self.hosts, UpdateLimits(config, self.registry))
        self.members: list[str] = []  # the session's participants, in the order they were enabled
        self._index: dict[str, int] | None = None  # participant -> position in sorted order; lazy
        self.started = False
        self._params: Params = Params()
        self._spec = self._params.spec
        self.evaluation: EvalRound | None = None  # the federated evaluation in progress
        self._reconnects_seen = transport.reconnects

    @property
    def params(self) -> Params:
        """The model of the round in progress (TRAIN's and EVALUATE's payload)."""
        return self._params

    @params.setter
    def params(self, params: Params) -> None:
        if params is not self._params:
            self._params, self._spec = params, params.spec  # the spec once per model, not per message

    @property
    def session_id(self) -> str:
        return self.config.session_id

    def message(self, kind: Kind, *, round: int = 0, body: Mapping[str, object] | None = None) -> Message:
        return make(kind, self.sender_id, session_id=self.session_id, round=round, body=dict(body or {}))

    def collect_settings(self) -> CollectSettings:
        return CollectSettings(self._spec, self.config.max_update_bytes, self.config.compression, self.seen)

    # -- a round ---------------------------------------------------------------------------------
    async def train_round(
        self,
        rnd: int,
        attempt: int,
        params: Params,
        aggregator: Aggregator,
        membership: Membership,
        fit: FitFor,
        sampling: ClientSampling | None = None,
    ) -> RoundState | str:
        """Select, send TRAIN, collect until all answered or the deadline: the round, closed for
        answers (not yet aggregated); or why it could not start. With ``sampling`` (a strategy's
        Poisson sampling, which its privacy accounting assumes) each participant takes part
        independently at its rate instead of a ``fraction`` drawn without replacement; the draw
        may be empty (then nothing is sent: the round has no participants)."""
        selected = self.select(rnd, attempt, sampling)
        if isinstance(selected, str):
            return selected
        r = RoundState(rnd, attempt, selected, time.monotonic(), aggregator)
        r.index = self.index()
        self.params = params
        self.collector.open(r, params)
        self.bus.emit(ev.RoundStarted(rnd, attempt, selected))
        for c in await membership.send_train(selected, r, lambda c: fit(c, r)):
            r.failed.setdefault(c, "could not be reached")
        r.check_done()
        await self.collector.wait(r, self.config.round_timeout_s)
        for c in r.missing():
            log.warning("round %d: no update from %s before the %.0f s deadline", rnd, c, self.config.round_timeout_s)
        self.round_collected(r)
        return r

    def round_collected(self, r: RoundState) -> None:
        """``train_round`` has closed ``r`` for answers: nothing more to do here (a population
        records which of its clients took part)."""

    def select(self, rnd: int, attempt: int, sampling: ClientSampling | None = None) -> list[str] | str:
        """The participants of one round's attempt (``train_round``'s draw), or why there are too
        few ONLINE to start it."""
        index = self.index()
        online = [c for c in self.registry.online() if c in index]
        if len(online) < self.config.round_floor():  # min_round_clients, else min_clients
            need, name = (
                self.config.round_floor(),
                "min_round_clients" if self.config.min_round_clients else "min_clients",
            )
            return f"round {rnd}: only {len(online)} clients are ONLINE, fewer than {name}={need}"
        rng = np.random.default_rng([self.config.seed, rnd, attempt])
        k = self.config.selection_size(len(online))
        if sampling is not None and sampling.rate < 1:
            # A combiner draws from a stream of its own: every client's inclusion is independent.
            node = None if self.sender_id == COORDINATOR_ID else self.sender_id
            return sampling.select(sorted(online), sampling.stream(self.config.seed, rnd, attempt, node))
        if k < len(online):
            return sorted(rng.choice(online, size=k, replace=False).tolist())
        return online

    def select_evaluation(self, rnd: int) -> list[str]:
        """The participants that evaluate round ``rnd``'s global model (``evaluate_round``'s draw)."""
        index = self.index()
        online = [c for c in self.registry.online() if c in index]
        rng = np.random.default_rng([self.config.seed, rnd, 1])  # a draw of its own, not training's
        k = min(len(online), max(1, math.ceil(self.config.fraction_evaluate * len(online))))
        return sorted(rng.choice(online, size=k, replace=False).tolist()) if k < len(online) else online

    async def evaluate_round(self, rnd: int, params: Params, membership: Membership, body: EvaluateBody) -> EvalRound:
        """EVALUATE the global model on a ``fraction_evaluate`` share of the participants, collect
        their figures until all answered or the deadline (``runtime.evaluation``)."""
        selected = self.select_evaluation(rnd)
        e = EvalRound(rnd, selected)
        self.params, self.evaluation = params, e
        for c in await membership.send_evaluate(selected, e, body):
            e.failed[c] = "could not be reached"
            e.answered(c)
        try:
            async with asyncio.timeout(self.config.round_timeout_s):
                await e.done.wait()
        except TimeoutError:
            for c in sorted(e.pending):
                e.failed[c] = f"no evaluation within {self.config.round_timeout_s:.0f} s"
        e.closed, self.evaluation = True, None
        return e

    def on_evaluation(self, msg: Message, membership: Membership) -> None:
        e = self.evaluation
        if e is None or e.closed or msg.envelope.round != e.round:
            log.info("dropped late evaluation from %s for round %d", msg.sender, msg.envelope.round)
            return
        members, failures = read_evaluation(msg)
        named = [m.client_id for m in members] + [c for c, _ in failures]
        if any(not membership.vouches(msg.sender, c) for c in named):
            raise ProtocolError(f"{msg.sender} reports evaluations of clients it does not answer for")
        if msg.sender not in e.pending and not any(c in e.pending for c in named):
            raise ProtocolError(f"{msg.sender} was not asked to evaluate round {e.round}, or answered already")
        for m in members:
            e.results[m.client_id] = m
            self.bus.emit(ev.ClientEvaluated(e.round, m.client_id, m.num_examples, m.metrics))
        for c, reason in failures:
            log.warning("round %d: %s could not evaluate: %s", e.round, c, reason)
            e.failed[c] = reason
        for who in (msg.sender, *named):
            e.answered(who)

    async def on_message(self, msg: Message, membership: Membership) -> None:
        """A message from a participant: its membership's (registrations, answers), or liveness."""
        try:
            if await membership.on_message(msg):
                return
            if msg.kind is Kind.HEARTBEAT:
                self.on_heartbeat(msg)
            elif msg.kind is Kind.ERROR:
                self.collector.on_error(msg)
            elif msg.kind is Kind.DONE:
                log.info("%s: %s is done", self.sender_id, msg.sender)
            else:
                log.warning("%s: ignored unexpected %s from %s", self.sender_id, msg.kind, msg.sender)
        except FedhiveError as exc:
            log.warning("%s: rejected %s from %s: %s", self.sender_id, msg.kind, msg.sender, exc)
            if msg.kind is Kind.UPDATE:
                self.collector.reject(msg, str(exc))

    async def stop_all(self, reason: str | None = None) -> None:
        """STOP to the session's participants (the session is over), or, with the reason it failed,
        to every participant known, OFFLINE ones included (one that was only slow to beat would
        otherwise wait out its own timeout)."""
        if reason is None:
            await self.send_all(list(self.members), lambda _c: self.message(Kind.STOP))
            self.release()
        else:
            body = StopBody.model_construct(reason=reason[:1000]).to_body()
            everyone = [c.client_id for c in self.registry.all()]
            await self.send_all(everyone, lambda _c: self.message(Kind.STOP, body=body))

    def index(self) -> dict[str, int]:
        if self._index is None:  # built once per change of membership, not every round
            self._index = {c: i for i, c in enumerate(sorted(self.members))}
        return self._index

    # -- membership and liveness -------------------------------------------------------------------
    async def enable(self, participants: list[str], enable: EnableBody) -> None:
        known = set(self.members)  # a set: with 1000 clients a list scan per client is O(n^2)
        for c in participants:
            if c not in known:
                known.add(c)
                self.members.append(c)
                self._index = None
            previous = self.registry.set_status(c, PeerStatus.TRAINING)
            if previous is not None:
                self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.TRAINING, previous))
        body = enable.to_body()
        await self.send_all(participants, lambda _c: self.message(Kind.ENABLE, body=body))

    def release(self) -> None:
        """The session is over: its participants are ONLINE again (OFFLINE ones stay OFFLINE)."""
        for c in self.members:
            info = self.registry.get(c)
            if info is None or info.status is not PeerStatus.TRAINING:
                continue
            previous = self.registry.set_status(c, PeerStatus.ONLINE)
            if previous is not None:
                self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.ONLINE, previous))

    def seen(self, participant: str) -> None:
        if participant in self.registry and self.registry.seen(participant) is PeerStatus.OFFLINE:
            status = PeerStatus.TRAINING if participant in self.members else PeerStatus.ONLINE
            self.registry.set_status(participant, status)
            self.bus.emit(ev.ClientStatusChanged(participant, status, PeerStatus.OFFLINE))

    def on_heartbeat(self, msg: Message) -> None:
        if msg.sender not in self.registry:
            return
        self.seen(msg.sender)
        body = parse_body(HeartbeatBody, msg)
        info = self.registry.get(msg.sender)
        assert info is not None
        info.epoch, info.epochs, info.loss, info.accuracy = body.epoch, body.epochs, body.loss, body.accuracy
        self.bus.emit(
            ev.HeartbeatReceived(
                msg.sender, body.status, msg.envelope.round, info.epoch, info.epochs, info.loss, info.accuracy
            )
        )

    async def check_liveness(self) -> None:
        """Participants silent for longer than the heartbeat timeout go OFFLINE (a round waiting
        for one stops waiting); then our own heartbeat, so that they know we are alive."""
        if not self.transport.connected:
            return  # our own link is down (a broker restart): silence is no sign that a client is gone
        if self.transport.reconnects != self._reconnects_seen:
            # It was down since we last looked: everyone gets a full timeout to be heard again.
            self._reconnects_seen = self.transport.reconnects
            self.registry.refresh_all()
        for c in self.registry.expire():
            self.bus.emit(ev.ClientStatusChanged(c, PeerStatus.OFFLINE, None))
            if self.evaluation is not None and c in self.evaluation.pending:
                self.evaluation.failed[c] = "went OFFLINE"
                self.evaluation.answered(c)
            r = self.collector.current
            if r is not None:
                timeout = self.config.heartbeat_timeout_s or 0
                self.collector.fail(r, c, f"went OFFLINE (no heartbeat for {timeout:.0f} s)")
        if self.config.heartbeat_interval_s:
            body = HeartbeatBody.model_construct(status="RUNNING" if self.started else "PENDING").to_body()
            # A host hears us for all its clients: one beat to it, not one to each (runtime.hosted).
            targets = self.hosts.beat_targets(self.alive())
            await self.send_all(targets, lambda _c: self.message(Kind.HEARTBEAT, body=body))

    def alive(self) -> list[str]:
        return [c.client_id for c in self.registry.all() if c.status is not PeerStatus.OFFLINE]

    # -- sending ------------------------------------------------------------------------------------
    async def send(self, to: str, message: Message) -> bool:
        try:
            await self.transport.send(to, message)
            return True
        except TransportError as exc:
            log.warning("could not send %s to %s: %s", message.kind, to, exc)
            return False

    async def send_all(self, participants: list[str], build: Callable[[str], Message]) -> list[str]:
        """Send to every participant concurrently; returns those that could not be reached."""
        results = await self.transport.send_many([(c, build(c)) for c in participants])
        failed = []
        for c, error in zip(participants, results, strict=True):
            if error is not None:
                log.warning("could not reach %s: %s", c, error)
                failed.append(c)
        return failed
