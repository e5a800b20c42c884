"""A client: registers, trains in a worker thread when told, streams heartbeats, sends updates.

Like the coordinator it only knows its ``Transport`` and its bus. Training and evaluation run in a
worker thread (``executor``) and come back as events, so the node keeps answering (heartbeats,
STOP) while a long epoch runs. Registration is retried until a deadline, and with
``coordinator_timeout_s`` a registered client that hears nothing from its coordinator (whose
heartbeats it expects) for that long gives up: a client never waits forever for a coordinator that
is not there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from fedhive.app.learner import EpochProgress, FitConfig, Trainer
from fedhive.core.compression import UpdateCompressor
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import ParamSpec
from fedhive.errors import AppError, ConfigError, DataError, FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.evaluation import evaluation_body
from fedhive.runtime.hosted import Member
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.payloads import OFFLOAD_BYTES, payload_params, payload_size
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.base import Transport

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
        self._persistent = persistent
        self._registered = False
        self._coordinator_timeout_s = coordinator_timeout_s
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
        b = self.bus
        b.on(ev.MessageIn, self._on_message)
        b.on(_Tick, self._on_tick)
        b.on(_Progress, self._on_progress)
        b.on(ev.TrainingFinished, self._on_training_finished)
        b.on(_Evaluated, self._on_evaluated)

    @property
    def rounds_trained(self) -> int:
        return len(self._rounds_done)

    @property
    def registered(self) -> bool:
        return self._registered

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
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
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
    async def _register(self) -> None:
        body = {"num_examples": self._num_examples, "label_counts": self._label_counts}
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
            if silence is not None:
                self.bus.stop(
                    SessionFailed(f"{self.node_id}: no message from the coordinator for {silence:.0f} s; giving up")
                )
                return
            await self._heartbeat()
            self.bus.call_later(self._heartbeat_s, _Tick("heartbeat"))

    async def _heartbeat(self) -> None:
        body: dict[str, object] = {"status": self.status.value}
        p = self._last_progress
        if self._training and p is not None:
            body.update(epoch=p.epoch, epochs=p.epochs, loss=p.loss, accuracy=p.accuracy)
        rnd = self._training[0] if self._training else 0
        await self._send(make(Kind.HEARTBEAT, self.node_id, session_id=self._session_id, round=rnd, body=body))

    def _coordinator_silence(self) -> float | None:
        """How long the coordinator has been silent, if that is longer than we wait; else None."""
        if self._coordinator_timeout_s is None or not self._registered:
            return None
        now = time.monotonic()
        if not self.transport.connected or self.transport.reconnects != self._reconnects_seen:
            # Our own link is or was down: the coordinator's silence says nothing about it.
            self._reconnects_seen = self.transport.reconnects
            self._last_heard = now
            return None
        limit = max(self._coordinator_timeout_s, 3 * (self._coordinator_interval_s or 0.0))
        silence = now - self._last_heard
        return silence if silence > limit else None

    def _mark_registered(self, body: dict[str, object]) -> None:
        interval = body.get("heartbeat_interval_s")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
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
                self._mark_registered(msg.envelope.body)
            elif msg.kind is Kind.HEARTBEAT:
                pass  # the coordinator is alive; noted above
            elif msg.kind is Kind.ENABLE:
                self._enable(msg)
            elif msg.kind is Kind.TRAIN:
                await self._train(msg)
            elif msg.kind is Kind.EVALUATE:
                await self._evaluate(msg)
            elif msg.kind is Kind.STOP and self._persistent:
                log.info("%s: session %s over; waiting for the next", self.node_id, self._session_id)
                await self._send(make(Kind.DONE, self.node_id, session_id=self._session_id))
                self._session_id, self._training, self._trainer = "", None, None
            elif msg.kind is Kind.STOP and "reason" in msg.envelope.body:
                reason = str(msg.envelope.body["reason"])[:1000]
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
                    body={"reason": str(exc)[:500], "attempt": msg.envelope.body.get("attempt", 0)},
                )
            )
            if msg.kind is Kind.ENABLE and isinstance(exc, ConfigError | DataError | AppError) and not self._persistent:
                self.bus.stop(exc)  # this client cannot train the session's model: no use staying

    def _enable(self, msg: Message) -> None:
        config, spec = read_enable(msg)
        self._mark_registered({})
        self._session_id = msg.envelope.session_id
        trainer = self._trainer_for(config)
        own = getattr(trainer, "param_spec", None)
        if isinstance(own, ParamSpec) and own != spec:
            raise ConfigError(
                f"{self.node_id}: the session's model {_shapes(spec)} does not fit this client's data, which "
                f"gives {_shapes(own)}: check the data's features and label classes"
            )
        self._config, self._spec, self._trainer = config, spec, trainer
        self._compressor = UpdateCompressor(config.compression)

    async def _train(self, msg: Message) -> None:
        if self._trainer is None or self._spec is None:
            raise ProtocolError("TRAIN before ENABLE")
        env = msg.envelope
        check_app_named(env.body, self._config)
        spec, limit = self._spec, self._max_payload
        if payload_size(msg) > OFFLOAD_BYTES:  # checking a big model must not stall heartbeats
            params = await asyncio.to_thread(payload_params, msg, spec, max_bytes=limit, what="global model")
        else:
            params = payload_params(msg, spec, max_bytes=limit, what="global model")
        self._compressor.begin_round(params)
        fit = dataclasses.replace(FitConfig.from_json(env.body.get("fit", {})), round=env.round)
        key = (env.round, int(env.body.get("attempt", 0)))
        if self._fit_gate is not None:
            await self._fit_gate.acquire(self.node_id)
        self._training = key
        self._last_progress = None
        self.bus.emit(ev.TrainingStarted(*key))
        trainer, bus = self._trainer, self.bus

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
        check_app_named(env.body, self._config)
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
        base = {"attempt": event.attempt}
        if event.result is None:
            self._release_gate()
            await self._send(
                make(
                    Kind.ERROR,
                    self.node_id,
                    session_id=self._session_id,
                    round=event.round,
                    body={**base, "reason": event.error or "training failed"},
                )
            )
            return
        self._rounds_done.add(event.round)
        r = event.result
        payload, encoding = self._compressor.compress(r.params)  # the update itself unless compressed
        body = {**base, "num_examples": r.num_examples, "metrics": r.metrics, **encoding}
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
    try:
        config = SessionConfig.model_validate(msg.envelope.body.get("config", {}))
        spec = ParamSpec.from_json(msg.envelope.body["spec"])
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed ENABLE: {exc}") from None
    return config, spec


def check_app_named(body: dict[str, object], config: SessionConfig | None) -> None:
    """A TRAIN names the session's app: one naming another code digest than the session this
    client was enabled for (and checked its own app against) is refused."""
    digest = body.get("app_digest")
    if config is not None and digest is not None and digest != config.app_digest:
        raise ProtocolError(f"TRAIN names app code {str(digest)[:12]}, not the session's {config.app_digest[:12]}")


def _shapes(spec: ParamSpec) -> str:
    return "(" + ", ".join(f"{t.name} {list(t.shape)}" for t in spec.tensors) + ")"
