"""A combiner: a coordinator towards its clients, a client towards the coordinator (nested FedAvg).

It reuses the coordinator's round logic for its own clients (registration, heartbeats, update
checks, deadline, quorum), but a round starts when the coordinator's ``train`` arrives, on the
coordinator's model, and ends by sending one ``partial`` upstream (``runtime.partials``) instead of
applying the aggregate. A strategy that cannot merge gets the raw updates forwarded in that one
message. The session's settings come from the coordinator's ``enable``: a combiner is started with
nothing but an id, a secret and where the broker is.

A combiner beats towards the coordinator like a client, and the coordinator's heartbeats tell it
that the coordinator is alive; ``upstream_timeout_s`` of silence ends it. If its sub-round misses
quorum it reports an ``error`` for the round and waits for the next ``train``: the coordinator,
which sees all combiners, decides whether the round can go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.partials import partial_message, raw_message
from fedhive.runtime.payloads import body_int, payload_params
from fedhive.runtime.round_state import RoundState, shortfall_reason
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import AggregateResult, Aggregator, Strategy, Update
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.combiner")


class _Collect(Aggregator):
    """Keeps the updates as they are, for a strategy that must see every one of them upstream."""

    mergeable = False

    def __init__(self) -> None:
        self.updates: list[Update] = []

    def add(self, update: Update) -> None:
        self.updates.append(update)

    @property
    def count(self) -> int:
        return len(self.updates)

    def result(self) -> AggregateResult:
        raise NotImplementedError("a combiner forwards raw updates; it never aggregates them itself")


class _Forward(Strategy):
    name = "forward"

    def aggregator(self, global_params: Params) -> Aggregator:
        return _Collect()


class Combiner(Coordinator):
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
        **kwargs: Any,
    ) -> None:
        # Until the coordinator's ENABLE says otherwise: accept clients, run no rounds.
        placeholder = SessionConfig(
            session_id="pending",
            min_clients=1,
            heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            registration_timeout_s=10**9,
        )
        super().__init__(placeholder, _SpeakingAs(node_id, transport), Params({}), **kwargs)
        self.node_id = node_id
        self.upstream_id = upstream_id
        self.upstream_timeout_s = upstream_timeout_s
        self.exact_partials = exact_partials  # float64 sums on the wire: see runtime.partials
        self._enabled = False
        self._upstream_registered = False
        self._upstream_heard = time.monotonic()
        self._reported: tuple[int, int] | None = None

    # -- routing ---------------------------------------------------------------------------------
    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        if msg.sender != self.upstream_id:
            await super()._on_message(event)
            if msg.kind is Kind.REGISTER:
                await self._report()
            return
        self._upstream_heard = time.monotonic()
        try:
            if msg.kind is Kind.REGISTERED:
                self._upstream_registered = True
            elif msg.kind is Kind.ENABLE:
                self._on_enable(msg)
            elif msg.kind is Kind.TRAIN:
                await self._on_train(msg)
            elif msg.kind is Kind.STOP and "reason" in msg.envelope.body:
                self._fail(f"the coordinator ended the session: {str(msg.envelope.body['reason'])[:1000]}")
            elif msg.kind is Kind.STOP:
                await self._finish()
        except FedhiveError as exc:
            log.warning("%s: cannot act on %s from the coordinator: %s", self.node_id, msg.kind, exc)
            await self._upstream(Kind.ERROR, msg.envelope.round, {"reason": str(exc)[:500], "attempt": 0})

    def _on_enable(self, msg: Message) -> None:
        body = msg.envelope.body
        try:
            upstream = SessionConfig.model_validate(body.get("config", {}))
            spec = ParamSpec.from_json(body["spec"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed ENABLE: {exc}") from None
        # Our clients get the coordinator's settings, with our own liveness rules and no retries:
        # a failed sub-round is reported upstream, where the round's fate is decided.
        self.config = upstream.model_copy(
            update={
                "min_clients": 1,
                "fraction": 1.0,  # the coordinator selected us; we train all our clients
                "max_clients": None,
                "max_round_retries": 0,
                "heartbeat_interval_s": self.config.heartbeat_interval_s,
                "heartbeat_timeout_s": self.config.heartbeat_timeout_s,
            }
        )
        self.spec = spec
        upstream_strategy = parse_strategy(upstream.strategy)
        self.strategy = upstream_strategy if upstream_strategy.mergeable else _Forward()
        self._enabled = True

    async def _start_session(self) -> None:
        if not self._enabled:
            return  # clients wait (ONLINE) for the coordinator's ENABLE
        self._started = True
        await self._enable(self.registry.online())

    async def _on_train(self, msg: Message) -> None:
        if not self._enabled:
            raise ProtocolError("TRAIN before ENABLE")
        if not self._started:
            await self._start_session()
        env = msg.envelope
        attempt = body_int(env.body, "attempt", low=0, high=10**6) if "attempt" in env.body else 0
        if not self.registry.online():
            raise ProtocolError(f"{self.node_id} has no clients ONLINE for round {env.round}")
        self.params = payload_params(msg, self.spec, max_bytes=self.config.max_update_bytes, what="global model")
        self._next_round = env.round
        if self._round is not None and self._round.deadline:
            self._round.deadline.cancel()  # a new TRAIN supersedes an unfinished sub-round
        await self._start_round(attempt=attempt)

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

    # -- closing a sub-round: send the partial upstream ---------------------------------------------
    def _close_round(self) -> None:
        r = self._round
        assert r is not None
        r.closing = True
        if r.deadline:
            r.deadline.cancel()
        need = self.config.quorum_size(len(r.selected))
        if len(r.accepted) >= need:
            self.bus.emit(_SubRoundClosed(r, None))
        else:
            missing = [c for c in r.selected if c not in r.accepted and c not in r.failed]
            self.bus.emit(_SubRoundClosed(r, shortfall_reason(r, need, missing, self.config.round_timeout_s)))

    async def _on_sub_round_closed(self, event: _SubRoundClosed) -> None:
        r = event.round
        if self._round is r:
            self._round = None
        if event.failure is not None:
            log.warning("%s: %s", self.node_id, event.failure)
            await self._upstream(Kind.ERROR, r.round, {"reason": event.failure[:500], "attempt": r.attempt})
            self._give_back(r.claims)
            return
        agg = r.aggregator
        if isinstance(agg, _Collect):
            msg = raw_message(self.node_id, self.config.session_id, r.round, r.attempt, agg.updates)
        else:
            msg = partial_message(
                self.node_id,
                self.config.session_id,
                r.round,
                r.attempt,
                agg.partial(),
                sorted(r.accepted),
                spec=self.spec,
                exact=self.exact_partials,
            )
        await self._send(self.upstream_id, msg)
        self._give_back(r.claims)  # sent: forwarded raw updates have been read for the last time

    # -- upstream liveness -------------------------------------------------------------------------
    async def _report(self) -> None:
        """(Re-)register upstream with our current clients, so the coordinator knows our load."""
        online = self.registry.online()
        examples = sum(c.num_examples for c in self.registry.all() if c.client_id in online)
        if self._reported == (len(online), examples) and self._upstream_registered:
            return
        self._reported = (len(online), examples)
        body = {"role": "combiner", "clients": len(online), "num_examples": examples}
        await self._send(self.upstream_id, make(Kind.REGISTER, self.node_id, body=body))

    async def _on_heartbeat_check(self, event: ev.HeartbeatCheck) -> None:
        await super()._on_heartbeat_check(event)
        if time.monotonic() - self._upstream_heard > self.upstream_timeout_s:
            self.bus.stop(
                SessionFailed(f"{self.node_id}: no word from the coordinator for {self.upstream_timeout_s:.0f} s")
            )
            return
        if not self._upstream_registered:
            self._reported = None
            await self._report()
        body = {"status": "TRAINING" if self._round else "ONLINE", "clients": self.registry.online_count()}
        await self._upstream(Kind.HEARTBEAT, self._round.round if self._round else 0, body)

    def _on_registration_deadline(self, _: ev.RegistrationDeadline) -> None:
        return None  # the coordinator decides whether enough clients came, not us

    async def _upstream(self, kind: Kind, round: int, body: Mapping[str, object]) -> None:
        session = self.config.session_id if self._enabled else ""
        await self._send(self.upstream_id, make(kind, self.node_id, session_id=session, round=round, body=dict(body)))

    async def run(self) -> Any:
        self.bus.on(_SubRoundClosed, self._on_sub_round_closed)
        await self._report()
        return await super().run()


class _SpeakingAs(Transport):
    """The coordinator's code signs its messages as ``coordinator``; towards our clients we are
    the coordinator, but under our own id, so that clients and signatures name the right node."""

    def __init__(self, node_id: str, inner: Transport) -> None:
        self.node_id = node_id
        self.inner = inner

    def _as_us(self, message: Message) -> Message:
        if message.envelope.sender != COORDINATOR_ID:
            return message
        return Message(message.envelope.model_copy(update={"sender": self.node_id}), message.payload)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    @property
    def reconnects(self) -> int:
        return self.inner.reconnects

    async def send(self, to: str, message: Message) -> None:
        await self.inner.send(to, self._as_us(message))

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        return await self.inner.send_many([(to, self._as_us(m)) for to, m in items])

    async def publish(self, topic: str, message: Message) -> None:
        await self.inner.publish(topic, self._as_us(message))

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def recv(self) -> Message:
        return await self.inner.recv()


class _SubRoundClosed:
    __slots__ = ("failure", "round")

    def __init__(self, round: RoundState, failure: str | None) -> None:
        self.round = round
        self.failure = failure
