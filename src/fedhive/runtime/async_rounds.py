"""Asynchronous, buffered aggregation (FedBuff, Nguyen et al. 2022): the coordinator's loop when a
session says ``aggregation = "async"`` (docs/async.md).

Clients train continuously. A client that sends its update gets the current global model at once
(with a ``fraction`` below 1, a freed place goes to an idle client drawn at random), so a slow
client never holds anyone up. The wire protocol is the synchronous one: TRAIN's ``round`` is the
round its update is for, one past the model version it carries (version 0 is the initial model),
and UPDATE names it back, with TRAIN's ``attempt`` counting the trainings of one client on one
version. Every ``buffer_size`` accepted updates make a new model version, which is a round for
everything that follows rounds: events, rounds.csv, MLflow, ``evaluate_every``, checkpoints.

An update is folded as its change from the version it was trained on (the coordinator holds the
last ``max_staleness + 1`` versions: bounded memory), weighted by its staleness ``s`` (how many
versions were made since): the buffer's strategy gets ``current + w(s) * (update - its version)``,
so that FedAvg of a buffer of fresh updates is exactly FedAvg, and server optimisers, medians and
the update screen work as they do on rounds. An update staler than ``max_staleness`` is rejected,
named, with its staleness.

A resumed session restarts from its last checkpointed version: updates folded into the buffer
after it are lost (at most ``buffer_size - 1``), and every client is sent that version again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from fedhive.core.bodies import ErrorBody, TrainBody, UpdateBody, attempt_of, parse_body
from fedhive.core.envelope import Deferred, Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError, PayloadError
from fedhive.runtime import events as ev
from fedhive.runtime.async_buffer import Dispatch, HeldVersion, UpdateBuffer
from fedhive.runtime.async_staleness import shifted, staleness_weight
from fedhive.runtime.async_staleness import staleness_settings as staleness_settings  # simulate's option
from fedhive.runtime.claim_keeper import give_back
from fedhive.runtime.client_membership import ClientMembership
from fedhive.runtime.inline_executor import run_job
from fedhive.runtime.model_check import Refused, aggregate_checked
from fedhive.runtime.payloads import OFFLOAD_BYTES, payload_params, payload_size
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.update_limits import UpdateLimits
from fedhive.strategies.base import Update

if TYPE_CHECKING:
    from fedhive.runtime.coordinator import Coordinator

log = logging.getLogger("fedhive.coordinator")


class AsyncRounds:
    """The loop of an asynchronous session; ``Coordinator`` runs it instead of its rounds."""

    def __init__(self, coordinator: Coordinator) -> None:
        if not isinstance(coordinator.membership, ClientMembership):
            raise ConfigError("aggregation = async trains clients directly: a session over combiners is refused")
        if coordinator.strategy.client_sampling() is not None:
            name = coordinator.strategy.name
            raise ConfigError(f"{name} accounts for Poisson-sampled rounds: it cannot run with aggregation = async")
        self.c = coordinator
        self.down = coordinator.down
        self.config = coordinator.config
        self.version = coordinator._next_round - 1  # the latest global model's version
        self._limits = self.down.collector.limits or UpdateLimits(self.config, coordinator.registry)
        self._held: dict[int, HeldVersion] = {}
        self._buffer: UpdateBuffer | None = None
        self._parked: list[tuple[Message, Dispatch]] = []  # came while the buffer was full
        self._inflight: dict[str, Dispatch] = {}  # in the order sent: the oldest first
        self._idle: dict[str, None] = {}  # clients waiting for a TRAIN, in the order they came
        self._resting: set[str] = set()  # failed or timed out: sent nothing until the next version
        self._excluded: dict[str, str] = {}  # whose updates a refused version is tried again without
        self._attempts: dict[str, tuple[int, int]] = {}  # client -> (round, attempts on it so far)
        self._draws = 0
        self._refusals = 0
        self._running = False
        self._full = asyncio.Event()
        coordinator.bus.on(ev.ClientStatusChanged, self._on_status)

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Version after version: wait for ``buffer_size`` updates -> aggregate -> evaluate -> complete."""
        c, config = self.c, self.config
        self._idle = dict.fromkeys(m for m in sorted(self.down.members) if self._online(m))
        self._running = True
        self._hold(c.params)
        await self._open(c.params)
        while self.version < config.rounds:
            buf = await self._collect()
            if buf is None:
                return  # the session failed, with its reason
            base = self._held[self.version]
            checked = await run_job(c._executor, aggregate_checked, c.strategy, base.params, buf.r, base.screen)
            if isinstance(checked, Refused):
                if not self._refused(buf, checked):
                    return
                await self._open(base.params)
                continue
            params, aggregate = checked
            self.version += 1
            self._hold(params)
            if self.version < config.rounds:
                await self._open(params)  # the next buffer fills while this version is evaluated
            else:
                self._buffer, self._parked = None, []  # the last version: updates still coming are not needed
                c.params = params
            metrics = await c._evaluate(self.version, params) or c._train_figures(aggregate)
            c._complete(buf.r, params, aggregate, metrics)
            c._next_round = self.version + 1
            if c.best.exhausted(self.version) and self.version < config.rounds:
                log.info("no better %s for %d versions: stopping early", c.best.key_metric, self.version - c.best.round)
                c._stopped_early = True
                break
        self._running = False
        await c._finish()

    def _hold(self, params: Params) -> None:
        """``params`` is version ``self.version``: held (with its screen) while updates trained on
        it may still come; clients resting since the last version may train again."""
        self._held[self.version] = HeldVersion(params, self._limits.screen(params))
        for old in [v for v in self._held if v < self.version - self.config.max_staleness]:
            del self._held[old]
        self._refusals, self._excluded = 0, {}
        self._idle.update(dict.fromkeys(sorted(c for c in self._resting if self._online(c))))
        self._resting.clear()

    async def _open(self, params: Params) -> None:
        """A buffer for the next version (again, after a refused aggregate), then TRAIN to idle clients."""
        self.c.params = self.down.params = params
        aggregator = self.c.strategy.aggregator(params)
        r = RoundState(self.version + 1, self._refusals, [], time.monotonic(), aggregator)
        self._buffer = UpdateBuffer(r)
        self._full.clear()
        self.c.bus.emit(ev.RoundStarted(r.round, r.attempt, [*self._inflight, *self._idle]))  # who may add to it
        parked, self._parked = self._parked, []
        for msg, d in parked:
            await self._fold(msg, d)
        await self._fill()

    async def _collect(self) -> UpdateBuffer | None:
        """Until the buffer holds ``buffer_size`` updates; None if the session failed meanwhile."""
        config = self.config
        buf = self._buffer
        assert buf is not None
        patience = (config.max_round_retries + 1) * config.round_timeout_s
        while buf.r.aggregator.count < config.buffer_size:
            oldest = next(iter(self._inflight.values()), None)
            wake = min(buf.r.started + patience, (oldest.sent if oldest else math.inf) + config.round_timeout_s)
            try:
                async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                    await self._full.wait()
            except TimeoutError:
                pass
            self._full.clear()
            self._expire()
            reason = self._stuck(buf, patience)
            if reason is not None:
                self.c._fail(reason)
                return None
            await self._fill()
        buf.closing = True
        if buf.folding:
            await buf.drained.wait()
        return buf

    def _stuck(self, buf: UpdateBuffer, patience: float) -> str | None:
        online, floor = self.c.registry.online_count(), self.config.round_floor()
        if online < floor:
            name = "min_round_clients" if self.config.min_round_clients else "min_clients"
            return f"round {buf.r.round}: only {online} clients are ONLINE, fewer than {name}={floor}"
        if time.monotonic() - buf.r.started >= patience and buf.r.aggregator.count < self.config.buffer_size:
            return (
                f"round {buf.r.round}: {buf.r.aggregator.count} of buffer_size={self.config.buffer_size} updates "
                f"within {patience:g} s; {len(self._inflight)} clients training, {len(self._resting)} waiting "
                "for the next version after an error or a timeout"
            )
        return None

    def _refused(self, buf: UpdateBuffer, refused: Refused) -> bool:
        """A refused version is never applied: its buffer is dropped and collected again without
        the update that moved the model most, while retries are left (``runtime.model_check``)."""
        log.error("%s: not applied", refused.reason)
        culprit = max(sorted(buf.moves), key=buf.moves.__getitem__) if refused.retry and buf.moves else None
        if culprit is None or self._refusals >= self.config.max_round_retries:
            self.c._fail(f"{refused.reason}: not applied, and the round cannot be tried again without it")
            return False
        self._refusals += 1
        self._excluded[culprit] = f"excluded: {refused.reason}"
        self._rest(culprit)
        self.c.bus.emit(ev.UpdateRejected(buf.r.round, culprit, self._excluded[culprit]))
        self.c.bus.emit(ev.RoundRetried(buf.r.round, buf.r.attempt, refused.reason))
        return True

    # -- sending TRAIN ------------------------------------------------------------------------------
    async def _fill(self) -> None:
        """TRAIN to idle clients while fewer than the session's selection size train; none while
        the buffer is full (the next version is on its way)."""
        buf = self._buffer
        if buf is None or buf.closing or buf.r.aggregator.count >= self.config.buffer_size or not self._idle:
            return
        room = self.config.selection_size(self.c.registry.online_count()) - len(self._inflight)
        if room <= 0:
            return
        pool = list(self._idle)
        if room < len(pool):
            rng = np.random.default_rng([self.config.seed, self.version, self._draws])
            self._draws += 1
            pool = sorted(rng.choice(pool, size=room, replace=False).tolist())
        hosted = next((c for c in pool if self.down.hosts.host_of(c) is not None), None)
        if hosted is not None:
            self.c._fail(f"aggregation = async trains each client on its own: {hosted} answers through a client host")
            return
        params, now, index = self._held[self.version].params, time.monotonic(), self.down.index()
        for client in pool:
            del self._idle[client]
            last_round, tries = self._attempts.get(client, (0, -1))
            attempt = tries + 1 if last_round == buf.r.round else 0
            self._attempts[client] = (buf.r.round, attempt)
            self._inflight[client] = Dispatch(buf.r.round, attempt, now)
        for client in await self.down.send_all(pool, lambda cl: self._train(cl, params, index)):
            self._inflight.pop(client, None)
            self._rest(client)

    def _train(self, client: str, params: Params, index: dict[str, int]) -> Message:
        d = self._inflight[client]
        # A distinct seed for each training of a client on one version (its data shuffled anew).
        seed_index = index.get(client, 0) + d.attempt * max(1, len(index))
        fit = {**self.config.fit_config(d.round, seed_index).to_json(), **self.c.strategy.client_config()}
        body = TrainBody.model_construct(
            fit=fit, app=self.config.app, app_digest=self.config.app_digest, attempt=d.attempt
        ).to_body()
        down = self.down
        return make(Kind.TRAIN, down.sender_id, session_id=down.session_id, round=d.round, body=body, payload=params)

    # -- answers ------------------------------------------------------------------------------------
    async def on_message(self, msg: Message) -> bool:
        """UPDATE and ERROR of an asynchronous session; False for what the downstream handles."""
        if msg.kind is Kind.UPDATE:
            self.down.seen(msg.sender)
            try:
                await self._on_update(msg)
            except FedhiveError as exc:
                self._reject(msg, msg.envelope.round, str(exc))
        elif msg.kind is Kind.ERROR:
            try:
                self._on_error(msg)
            except FedhiveError as exc:
                log.warning("rejected an error report from %s: %s", msg.sender, exc)
        elif msg.kind is Kind.PARTIAL:
            log.warning("dropped a partial from %s: aggregation = async takes updates of single clients", msg.sender)
            self._give_back(msg)
        else:
            return False
        return True

    async def _on_update(self, msg: Message) -> None:
        sender, env = msg.sender, msg.envelope
        d = self._inflight.get(sender)
        if d is None or (d.round, d.attempt) != (env.round, attempt_of(msg)):
            known = sender in self.down.index()
            self._reject(msg, env.round, "late" if known else "sender was not sent a TRAIN")
            return
        del self._inflight[sender]
        if self._online(sender):
            self._idle[sender] = None
        try:
            await self._fold(msg, d)
        finally:
            await self._fill()

    async def _fold(self, msg: Message, d: Dispatch) -> None:
        buf, sender = self._buffer, msg.sender
        if buf is None:  # the last version is made: nothing more is folded
            self._give_back(msg)
            return
        if buf.closing or buf.r.aggregator.count >= self.config.buffer_size:
            self._parked.append((msg, d))  # folded into the next version's buffer
            return
        trained_on = d.round - 1
        staleness = self.version - trained_on
        base = self._held.get(trained_on)
        if base is None or staleness > self.config.max_staleness:
            reason = (
                f"stale: trained from version {trained_on}, the model is at version {self.version} "
                f"(staleness {staleness} > max_staleness={self.config.max_staleness})"
            )
            self._reject(msg, buf.r.round, reason)
            return
        if sender in self._excluded:
            self._reject(msg, buf.r.round, self._excluded[sender])
            return
        try:
            body = parse_body(UpdateBody, msg)
        except FedhiveError as exc:
            self._reject(msg, buf.r.round, str(exc))
            return
        n = self._limits.weight(sender, body.num_examples, buf.r.round)
        weight = staleness_weight(staleness, self.config.staleness_weighting, self.config.staleness_exponent)
        current, config, spec = self._held[self.version].params, self.config, base.params.spec
        nbytes = payload_size(msg)

        def fold() -> None:
            # Decode, check, screen against the version it was trained on, and fold, in one go.
            params = payload_params(
                msg, spec, max_bytes=config.max_update_bytes, what=f"update from {sender}",
                compression=config.compression, base=base.params,
            )  # fmt: skip
            distance, refused = base.screen.refusal(params)
            if refused is not None:
                raise PayloadError(f"update {refused}")
            if staleness or weight != 1.0:
                params = shifted(current, base.params, params, weight)
            buf.moves[sender] = max(buf.moves.get(sender, 0.0), n * weight * distance)
            buf.r.aggregator.add(Update(sender, params, n, body.metrics))

        buf.folding += 1
        try:
            await run_job(self.c._executor, fold) if nbytes > OFFLOAD_BYTES else fold()
        except FedhiveError as exc:
            self._rejected(sender, buf.r.round, str(exc))
            return
        finally:
            buf.folded()
            self._give_back(msg)  # read: its claim check (if any) goes back to the store
        buf.r.selected.append(sender)
        buf.r.accepted.add(sender)
        buf.r.reports[sender] = (n, body.metrics)
        log.debug("round %d: update from %s, staleness %d, weight %.3f", buf.r.round, sender, staleness, weight)
        self.c.bus.emit(ev.UpdateAccepted(buf.r.round, sender, n, body.metrics, nbytes))
        if buf.r.aggregator.count >= config.buffer_size:
            self._full.set()

    def _on_error(self, msg: Message) -> None:
        reason = parse_body(ErrorBody, msg).reason
        d = self._inflight.get(msg.sender)
        log.warning("client %s reports an error in round %d: %s", msg.sender, msg.envelope.round, reason)
        if d is not None and (d.round, d.attempt) == (msg.envelope.round, attempt_of(msg)):
            del self._inflight[msg.sender]
            self._rest(msg.sender)

    def _reject(self, msg: Message, round: int, reason: str) -> None:
        self._rejected(msg.sender, round, reason)
        self._give_back(msg)

    def _rejected(self, sender: str, round: int, reason: str) -> None:
        log.warning("rejected update from %s in round %d: %s", sender, round, reason)
        self.c.bus.emit(ev.UpdateRejected(round, sender, reason))

    def _give_back(self, msg: Message) -> None:
        if isinstance(msg.payload, Deferred):
            give_back(self.c._executor, [msg.payload])

    # -- who trains ------------------------------------------------------------------------------------
    def _expire(self) -> None:
        """A client that has not answered within ``round_timeout_s`` of its TRAIN is given up for now."""
        horizon = time.monotonic() - self.config.round_timeout_s
        for client, d in list(self._inflight.items()):
            if d.sent > horizon:
                break  # in the order sent: the rest are younger
            log.warning("round %d: no update from %s within %g s", d.round, client, self.config.round_timeout_s)
            del self._inflight[client]
            self._rest(client)

    def _rest(self, client: str) -> None:
        self._idle.pop(client, None)
        self._resting.add(client)

    def _online(self, client: str) -> bool:
        info = self.c.registry.get(client)
        return info is not None and info.status is not PeerStatus.OFFLINE

    async def _on_status(self, e: ev.ClientStatusChanged) -> None:
        client = e.client_id
        if e.status == PeerStatus.OFFLINE:
            self._inflight.pop(client, None)
            self._idle.pop(client, None)
            return
        if e.status == PeerStatus.ONLINE and e.previous == PeerStatus.TRAINING:
            self._inflight.pop(client, None)  # it registered again: the TRAIN it had is lost
        if self._running and client in self.down.index() and client not in self._inflight:
            if client not in self._resting:
                self._idle[client] = None
            await self._fill()
