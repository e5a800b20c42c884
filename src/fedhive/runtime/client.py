"""A client: registers, trains in a worker thread when told, streams heartbeats, sends updates.

Like the coordinator it only knows its ``Transport`` and its bus. Training and evaluation run in a
worker thread (``executor``) and come back as events, so the node keeps answering (heartbeats,
STOP) while a long epoch runs. Registration is retried until a deadline, and with
``coordinator_timeout_s`` a registered client that hears nothing from its coordinator (whose
heartbeats it expects) for that long gives up: a client never waits forever for a coordinator that
is not there.

A site agent (``agent=True``, ``fedhive agent``) outlives sessions: it never gives up waiting
for a coordinator; while idle it beats with what it announces (its site, apps and data sets), which
a coordinator or the platform's hub takes as its registration; a session whose coordinator falls
silent ends for it and it goes back to idle; ``leave(reason)`` (SIGTERM) reports the round in
progress lost, with the reason, before it stops. See docs/networked.md, "Site agents".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from fedhive.app.learner import EpochProgress, FitConfig, Trainer
from fedhive.core.bodies import (
    MAX_REASON,
    EnableBody,
    ErrorBody,
    EvaluateBody,
    Member,
    RegisteredBody,
    StopBody,
    TrainBody,
    UpdateBody,
    attempt_claimed,
    parse_body,
)
from fedhive.core.compression import UpdateCompressor
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec
from fedhive.core.stopping import stop_tasks
from fedhive.errors import AppError, ConfigError, DataError, FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.evaluation import evaluation_body
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.payloads import OFFLOAD_BYTES, payload_params, payload_size
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.base import Transport

if TYPE_CHECKING:
    from fedhive.secagg.node_client import SecureClient

log = logging.getLogger("fedhive.client")

TrainerFactory = Callable[[SessionConfig], Trainer]


@dataclass(frozen=True, slots=True)
class _Progress:
    round: int
    progress: EpochProgress


@dataclass(frozen=True, slots=True)
class _Evaluated:
    round: int
    members: list[Member]
    failures: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Tick:
    what: str  # "heartbeat" or "register"


@dataclass(frozen=True, slots=True)
class _Leave:
    reason: str


class FitGate(Protocol):
    """Bounds how many clients of one process may hold an update the coordinator has not taken
    yet (``simulation``'s virtual clients): ``acquire`` before training, and ``release`` when no
    update follows; the owner releases when the coordinator has accepted or rejected it."""

    async def acquire(self, client_id: str) -> None: ...

    def release(self, client_id: str) -> None: ...


class ClientNode:
    def __init__(
        self,
        node_id: str,
        transport: Transport,
        trainer_for: TrainerFactory,
        *,
        num_examples: int,
        label_counts: dict[str, int] | None = None,
        coordinator_id: str = COORDINATOR_ID,
        executor: Executor | None = None,
        heartbeat_interval_s: float | None = 5.0,
        register_retry_s: float = 2.0,
        register_timeout_s: float = 120.0,
        max_payload_bytes: int = 256 * 1024 * 1024,
        progress_interval_s: float = 1.0,
        persistent: bool = False,
        coordinator_timeout_s: float | None = None,
        bus: EventBus | None = None,
        fit_gate: FitGate | None = None,
        agent: bool = False,
        announce: Mapping[str, object] | None = None,
        follow_announced_timeout: bool = False,
    ) -> None:
        self.node_id = node_id
        self._fit_gate = fit_gate
        self.transport = transport
        self.bus = bus or EventBus()
        self._trainer_for = trainer_for
        self._num_examples = num_examples
        self._label_counts = label_counts or {}
        self._coordinator = coordinator_id
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"fedhive-train-{node_id}")
        self._heartbeat_s = heartbeat_interval_s
        self._register_retry_s = register_retry_s
        self._register_timeout_s = register_timeout_s
        self._max_payload = max_payload_bytes
        self._progress_interval_s = progress_interval_s
        # A platform peer outlives sessions: after STOP it is ONLINE for the next one.
        self._persistent = persistent or agent
        self._agent = agent
        self._announce = dict(announce or {})  # an agent's site, apps and data sets (REGISTER, idle beats)
        self._beat_failed = False
        self._registered = False
        self._coordinator_timeout_s = coordinator_timeout_s
        # A combiner's client gives it up after the heartbeat timeout the combiner announces (as
        # long as the combiner waits for the client), not after coordinator_timeout_s: it can move
        # to another combiner, so waiting a minute for a dead one only idles it.
        self._follow_announced_timeout = follow_announced_timeout
        self._announced_timeout_s: float | None = None
        self._coordinator_interval_s: float | None = None
        self._last_heard = time.monotonic()
        self._reconnects_seen = transport.reconnects
        self._waited_s = 0.0
        self._session_id = ""
        self._config: SessionConfig | None = None
        self._spec: ParamSpec | None = None
        self._trainer: Trainer | None = None
        self._compressor = UpdateCompressor()  # per session: holds top-k's error feedback
        self._training: tuple[int, int] | None = None  # (round, attempt) in progress
        self._last_progress: EpochProgress | None = None
        self._rounds_done: set[int] = set()  # a round trained twice (its TRAIN sent again) counts once
        self._secure: SecureClient | None = None  # the session's secure aggregation, when it has it
        b = self.bus
        b.on(ev.MessageIn, self._on_message)
        b.on(_Tick, self._on_tick)
        b.on(_Progress, self._on_progress)
        b.on(ev.TrainingFinished, self._on_training_finished)
        b.on(_Evaluated, self._on_evaluated)
        b.on(_Leave, self._on_leave)

    @property
    def rounds_trained(self) -> int:
        return len(self._rounds_done)

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def status(self) -> PeerStatus:
        return PeerStatus.TRAINING if self._training else PeerStatus.ONLINE

    async def run(self) -> None:
        """Serve until the coordinator says STOP; raises ``SessionFailed`` if it never answers."""
        receiver = asyncio.create_task(self._receive(), name=f"client-{self.node_id}-receive")
        try:
            await self._register()
            await self.bus.run()
        finally:
            await stop_tasks([receiver], owner=f"client {self.node_id}")
            if self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def _receive(self) -> None:
        async for message in self.transport:
            if message.sender != self._coordinator:
                log.warning("%s: ignored %s from %s (not the coordinator)", self.node_id, message.kind, message.sender)
                continue
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return
        self.bus.stop(TransportError(f"{self.node_id}: transport closed"))

    # -- registration and heartbeats -----------------------------------------------------------
    def leave(self, reason: str) -> None:
        """Stop (an agent told to stop): the round in progress is reported lost with ``reason``."""
        self.bus.emit(_Leave(reason))

    async def _on_leave(self, event: _Leave) -> None:
        if self._session_id:
            rnd, attempt = self._training or (0, 0)
            what = f"round {rnd}'s update is lost" if self._training else "leaving the session"
            log.warning("%s: %s; %s", self.node_id, event.reason, what)
            body = {"reason": f"{event.reason}: {what}", "attempt": attempt}
            await self._send(make(Kind.ERROR, self.node_id, session_id=self._session_id, round=rnd, body=body))
        self.bus.stop()

    def _register_body(self) -> dict[str, object]:
        body: dict[str, object] = {"num_examples": self._num_examples, "label_counts": self._label_counts}
        if self._announce:
            body["site"] = self._announce  # an open key: nodes that do not know it ignore it
        return body

    async def _register(self) -> None:
        body = self._register_body()
        if self._agent:
            # An agent does not wait for an answer: its idle beats carry its registration, and
            # whichever coordinator comes (now or in a week) takes it from the next one.
            await self._send(make(Kind.REGISTER, self.node_id, body=body))
            if self._heartbeat_s:
                self.bus.call_later(self._heartbeat_s, _Tick("heartbeat"))
            return
        try:
            await self.transport.send(self._coordinator, make(Kind.REGISTER, self.node_id, body=body))
        except TransportError as exc:
            # Normal while the coordinator is not up yet: say so once, then retry quietly.
            level = logging.DEBUG if self._waited_s else logging.WARNING
            log.log(level, "%s: cannot reach the coordinator yet (%s); retrying", self.node_id, exc)
        self.bus.call_later(self._register_retry_s, _Tick("register"))

    async def _on_tick(self, tick: _Tick) -> None:
        if self.bus.stopped:
            return
        if tick.what == "register" and not self._registered:
            self._waited_s += self._register_retry_s
            if self._waited_s >= self._register_timeout_s:
                waited = f"{self._register_timeout_s:.0f} s"
                self.bus.stop(
                    SessionFailed(f"{self.node_id}: the coordinator did not answer registration within {waited}")
                )
                return
            await self._register()
        elif tick.what == "heartbeat" and self._heartbeat_s:
            silence = self._coordinator_silence()
            if silence is not None and self._agent:
                if self._session_id:
                    log.warning(
                        "%s: no message from the coordinator of session %s for %.0f s; back to idle",
                        self.node_id,
                        self._session_id,
                        silence,
                    )
                    self._end_session()
            elif silence is not None:
                self.bus.stop(
                    SessionFailed(f"{self.node_id}: no message from the coordinator for {silence:.0f} s; giving up")
                )
                return
            await self._heartbeat()
            self.bus.call_later(self._heartbeat_s, _Tick("heartbeat"))

    async def _heartbeat(self) -> None:
        body: dict[str, object] = {"status": self.status.value}
        if self._agent and not self._session_id:
            body.update(self._register_body())  # idle: the beat is also the agent's registration
        p = self._last_progress
        if self._training and p is not None:
            body.update(epoch=p.epoch, epochs=p.epochs, loss=p.loss, accuracy=p.accuracy)
        rnd = self._training[0] if self._training else 0
        beat = make(Kind.HEARTBEAT, self.node_id, session_id=self._session_id, round=rnd, body=body)
        if not (self._agent and not self._session_id):
            await self._send(beat)
            return
        try:
            await self.transport.send(self._coordinator, beat)
            self._beat_failed = False
        except TransportError as exc:
            # No coordinator on this broker (yet): normal for an idle agent. Said once, not every beat.
            level = logging.DEBUG if self._beat_failed else logging.WARNING
            log.log(level, "%s: idle; no coordinator to beat to (%s); beating on", self.node_id, exc)
            self._beat_failed = True

    def _coordinator_silence(self) -> float | None:
        """How long the coordinator has been silent, if that is longer than we wait; else None."""
        if self._coordinator_timeout_s is None or not self._registered:
            return None
        if self._agent and not self._session_id:
            return None  # idle: no coordinator owes an agent anything
        now = time.monotonic()
        if not self.transport.connected or self.transport.reconnects != self._reconnects_seen:
            # Our own link is or was down: the coordinator's silence says nothing about it.
            self._reconnects_seen = self.transport.reconnects
            self._last_heard = now
            return None
        timeout = self._coordinator_timeout_s
        if self._follow_announced_timeout and self._announced_timeout_s:
            # The announcement can only shorten the wait: a combiner that announced a day would
            # otherwise keep its clients from moving on after it goes silent.
            timeout = min(timeout, self._announced_timeout_s)
        limit = max(timeout, 3 * (self._coordinator_interval_s or 0.0))
        silence = now - self._last_heard
        return silence if silence > limit else None

    def _mark_registered(self, body: RegisteredBody) -> None:
        interval = body.heartbeat_interval_s
        if body.heartbeat_timeout_s is not None and body.heartbeat_timeout_s > 0:
            self._announced_timeout_s = float(body.heartbeat_timeout_s)
        if interval is not None and interval > 0:
            # Beat as often as the coordinator expects; it beats as often, so a silence of a few
            # intervals means that it is gone.
            self._coordinator_interval_s = float(interval)
            if self._heartbeat_s is not None:
                self._heartbeat_s = float(interval)
        if self._registered:
            return
        self._registered = True
        self.bus.emit(ev.ClientRegistered(self.node_id))
        if self._heartbeat_s:
            self.bus.call_later(self._heartbeat_s, _Tick("heartbeat"))

    async def _on_progress(self, event: _Progress) -> None:
        if not (self._training and self._training[0] == event.round):
            return
        self._last_progress = event.progress
        await self._heartbeat()

    # -- messages ---------------------------------------------------------------------------------
    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        self._last_heard = time.monotonic()
        session = msg.envelope.session_id
        if self._session_id and session and session != self._session_id and msg.kind is not Kind.ENABLE:
            # Left over from another session of a coordinator with the same id: not ours to act on.
            log.info("%s: ignored %s for session %s (in session %s)", self.node_id, msg.kind, session, self._session_id)
            return
        try:
            if msg.kind is Kind.REGISTERED:
                self._mark_registered(parse_body(RegisteredBody, msg))
            elif msg.kind is Kind.HEARTBEAT:
                pass  # the coordinator is alive; noted above
            elif msg.kind is Kind.ENABLE:
                self._enable(msg)
            elif msg.kind is Kind.TRAIN and self._secure is not None and "secagg" in msg.envelope.body:
                await self._secure.on_step(msg)  # a later step of a secure round (secagg.wire)
            elif msg.kind is Kind.TRAIN:
                await self._train(msg)
            elif msg.kind is Kind.EVALUATE:
                await self._evaluate(msg)
            elif msg.kind is Kind.STOP and self._persistent:
                log.info("%s: session %s over; waiting for the next", self.node_id, self._session_id)
                await self._send(make(Kind.DONE, self.node_id, session_id=self._session_id))
                if self._agent:
                    self.bus.emit(ev.ClientStopped(self.node_id, self.rounds_trained, self._session_id))
                self._end_session()
            elif msg.kind is Kind.STOP and (reason := parse_body(StopBody, msg).reason) is not None:
                self.bus.stop(SessionFailed(f"the coordinator ended the session: {reason}"))
            elif msg.kind is Kind.STOP:
                log.info("%s: stopped by the coordinator after %d rounds", self.node_id, self.rounds_trained)
                await self._send(make(Kind.DONE, self.node_id, session_id=self._session_id))
                self.bus.emit(ev.ClientStopped(self.node_id, self.rounds_trained))
                self.bus.stop()
            else:
                log.warning("%s: ignored unexpected %s message", self.node_id, msg.kind)
        except FedhiveError as exc:
            log.warning("%s: cannot act on %s: %s", self.node_id, msg.kind, exc)
            await self._send(
                make(
                    Kind.ERROR,
                    self.node_id,
                    session_id=self._session_id,
                    round=msg.envelope.round,
                    body=ErrorBody.model_construct(
                        reason=str(exc)[:MAX_REASON], attempt=attempt_claimed(msg)
                    ).to_body(),
                )
            )
            if msg.kind is Kind.ENABLE and isinstance(exc, ConfigError | DataError | AppError) and not self._persistent:
                self.bus.stop(exc)  # this client cannot train the session's model: no use staying

    def _end_session(self) -> None:
        """A persistent node's session is over: ready for the next one."""
        self._session_id, self._training, self._trainer, self._config = "", None, None, None
        self._secure = None
        self._rounds_done.clear()

    def _enable(self, msg: Message) -> None:
        config, spec = read_enable(msg)
        session = msg.envelope.session_id
        if self._agent and self._session_id and session != self._session_id:
            # One session at a time: a new one is accepted once the previous one has ended (STOP,
            # or its coordinator fell silent).
            raise ConfigError(f"{self.node_id} is busy in session {self._session_id}")
        self._mark_registered(RegisteredBody.model_construct())
        self._session_id = session
        trainer = self._trainer_for(config)
        own = getattr(trainer, "param_spec", None)
        if isinstance(own, ParamSpec) and own != spec:
            raise ConfigError(
                f"{self.node_id}: the session's model {_shapes(spec)} does not fit this client's data, which "
                f"gives {_shapes(own)}: check the data's features and label classes"
            )
        self._config, self._spec, self._trainer = config, spec, trainer
        self._compressor = UpdateCompressor(config.compression)
        self._secure = None
        if config.secure_aggregation:  # imported here: only its sessions need cryptography
            from fedhive.secagg.node_client import SecureClient

            self._secure = SecureClient(self.node_id, session, config, self._num_examples, self._send)

    async def _train(self, msg: Message) -> None:
        if self._trainer is None or self._spec is None:
            raise ProtocolError("TRAIN before ENABLE")
        env = msg.envelope
        body = parse_body(TrainBody, msg)
        check_app_named(body.app_digest, self._config)
        spec, limit = self._spec, self._max_payload
        if payload_size(msg) > OFFLOAD_BYTES:  # checking a big model must not stall heartbeats
            params = await asyncio.to_thread(payload_params, msg, spec, max_bytes=limit, what="global model")
        else:
            params = payload_params(msg, spec, max_bytes=limit, what="global model")
        self._compressor.begin_round(params)
        fit = dataclasses.replace(FitConfig.from_json(body.fit), round=env.round)
        opening = None  # a secure round's keys (or shares): exchanged while we train
        if self._secure is not None:
            answer = self._secure.opening(env.round, body.attempt, params, msg)
            if isinstance(self._executor, InlineExecutor):  # training would hold the loop: send first
                await self._send(answer)
            else:
                # Published while training starts, not before: the broker's confirm of a
                # persistent message waits for a disk sync, and training has no need to wait.
                opening = asyncio.ensure_future(self._send(answer))
        try:
            await self._start_training(self._trainer, env.round, body.attempt, params, fit)
        finally:
            if opening is not None:
                await opening

    async def _start_training(self, trainer: Trainer, rnd: int, attempt: int, params: Params, fit: FitConfig) -> None:
        key = (rnd, attempt)
        if self._fit_gate is not None:
            await self._fit_gate.acquire(self.node_id)
        self._training = key
        self._last_progress = None
        self.bus.emit(ev.TrainingStarted(*key))
        bus = self.bus

        interval = self._progress_interval_s
        last_sent = [time.monotonic()]

        def progress(p: EpochProgress) -> None:
            # At most one report per interval of training, throttled here in the worker thread:
            # each hop to the loop costs a self-pipe write and a wake-up (~40 us), and for a fit
            # shorter than the interval the UPDATE itself says all there is to say.
            now = time.monotonic()
            if now - last_sent[0] >= interval:
                last_sent[0] = now
                bus.emit_threadsafe(_Progress(key[0], p))

        def job() -> ev.TrainingFinished:
            try:
                return ev.TrainingFinished(key[0], key[1], trainer.fit(params, fit, progress))
            except FedhiveError as exc:
                return ev.TrainingFinished(key[0], key[1], None, str(exc))

        if isinstance(self._executor, InlineExecutor):
            self.bus.emit(job())  # in-process simulation: no thread hop (see InlineExecutor)
            return
        fut = asyncio.get_running_loop().run_in_executor(self._executor, job)
        fut.add_done_callback(self._training_done)

    async def _evaluate(self, msg: Message) -> None:
        """Judge the global model on this client's data, in the worker, and answer EVALUATION."""
        if self._trainer is None or self._spec is None:
            raise ProtocolError("EVALUATE before ENABLE")
        env = msg.envelope
        check_app_named(parse_body(EvaluateBody, msg).app_digest, self._config)
        if payload_size(msg) > OFFLOAD_BYTES:
            params = await asyncio.to_thread(payload_params, msg, self._spec, max_bytes=self._max_payload, what="model")
        else:
            params = payload_params(msg, self._spec, max_bytes=self._max_payload, what="global model")
        trainer, me = self._trainer, self.node_id

        def job() -> _Evaluated:
            try:
                result = trainer.evaluate(params)
                if result.num_examples < 1:
                    return _Evaluated(env.round, [], [(me, "evaluated no examples")])
                return _Evaluated(env.round, [Member(me, result.num_examples, dict(result.metrics))], [])
            except FedhiveError as exc:
                return _Evaluated(env.round, [], [(me, str(exc))])

        if isinstance(self._executor, InlineExecutor):
            await self._on_evaluated(job())
            return
        fut = asyncio.get_running_loop().run_in_executor(self._executor, job)
        fut.add_done_callback(self._training_done)  # the same path back to the bus

    async def _on_evaluated(self, event: _Evaluated) -> None:
        body = evaluation_body(event.members, event.failures)
        await self._send(make(Kind.EVALUATION, self.node_id, session_id=self._session_id, round=event.round, body=body))

    def _training_done(self, fut: asyncio.Future[ev.TrainingFinished] | asyncio.Future[_Evaluated]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # a bug in a trainer, not a user error: end the node loudly
            self.bus.stop(exc)
        else:
            self.bus.emit(fut.result())

    async def _on_training_finished(self, event: ev.TrainingFinished) -> None:
        if self._training != (event.round, event.attempt):
            self._release_gate()
            return  # superseded by a newer TRAIN
        self._training = None
        if event.result is None:
            self._release_gate()
            await self._send(
                make(
                    Kind.ERROR,
                    self.node_id,
                    session_id=self._session_id,
                    round=event.round,
                    body=ErrorBody.model_construct(
                        reason=event.error or "training failed", attempt=event.attempt
                    ).to_body(),
                )
            )
            return
        self._rounds_done.add(event.round)
        r = event.result
        if self._secure is not None:  # masked once the neighbours' shares are in: never sent as it is
            try:
                await self._secure.trained(event.round, event.attempt, r.params, r.num_examples)
            except FedhiveError as exc:
                error = ErrorBody.model_construct(reason=str(exc)[:MAX_REASON], attempt=event.attempt)
                await self._send(
                    make(Kind.ERROR, self.node_id, session_id=self._session_id, round=event.round, body=error.to_body())
                )
            return
        payload, encoding = self._compressor.compress(r.params)  # the update itself unless compressed
        update = UpdateBody.model_construct(
            attempt=event.attempt, num_examples=r.num_examples, metrics=r.metrics, **encoding
        )
        body = update.to_body()
        await self._send(
            make(Kind.UPDATE, self.node_id, session_id=self._session_id, round=event.round, body=body, payload=payload)
        )

    def _release_gate(self) -> None:
        if self._fit_gate is not None:
            self._fit_gate.release(self.node_id)

    async def _send(self, message: Message) -> None:
        try:
            await self.transport.send(self._coordinator, message)
        except TransportError as exc:
            log.warning("%s: could not send %s: %s", self.node_id, message.kind, exc)


def read_enable(msg: Message) -> tuple[SessionConfig, ParamSpec]:
    """The session configuration and model spec an ENABLE carries, checked."""
    body = parse_body(EnableBody, msg)
    try:
        config = SessionConfig.model_validate(body.config)
        spec = ParamSpec.from_json(body.spec)
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed ENABLE: {exc}") from None
    return config, spec


def check_app_named(digest: str | None, config: SessionConfig | None) -> None:
    """A TRAIN names the session's app: one naming another code digest than the session this
    client was enabled for (and checked its own app against) is refused."""
    if config is not None and digest is not None and digest != config.app_digest:
        raise ProtocolError(f"TRAIN names app code {str(digest)[:12]}, not the session's {config.app_digest[:12]}")


def _shapes(spec: ParamSpec) -> str:
    return "(" + ", ".join(f"{t.name} {list(t.shape)}" for t in spec.tensors) + ")"
