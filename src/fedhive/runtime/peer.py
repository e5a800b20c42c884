"""A peer of a decentralised federation (the DML workflow): no coordinator, every peer aggregates.

Peers meet on one broadcast topic. Each announces itself with a random 128-bit id and beats every
``beat_s``; a peer unheard for ``peer_timeout_s`` is gone. Once ``min_peers`` are alive the lowest
id makes the seed model and broadcasts it (round 0). Each round every peer trains on the model it
holds and broadcasts its update; the round's leader commits the set of ids to aggregate, and
every peer aggregates exactly that set in id order (``peer_rounds`` explains why this is
deterministic and what happens when the leader dies). A peer that joins late asks for the model
and gets it, directly, from the current round's leader; it takes part from the round it trains in
time for. Every wait is bounded: discovery, each round (deadline plus rechecks), and a resync.

Message kinds: ``announce`` (body ``type``: hello, beat, bye, commit) and ``peer_update`` (body
``type``: update, model).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor

from fedhive.app.learner import Evaluator, FitResult, Trainer
from fedhive.core.bodies import NO_MODEL, AnnounceBody, Body, PeerUpdateBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.peer_discovery import PeerDiscovery
from fedhive.runtime.peer_events import Beat, PeerRoundCompleted, RoundCheck, Trained
from fedhive.runtime.peer_rounds import PeerRound, PeerView, new_peer_id, params_digest
from fedhive.runtime.peer_updates import PeerUpdates, merge_round
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.peer")
__all__ = ["PeerNode", "PeerRoundCompleted"]  # PeerRoundCompleted: where it has always been imported from


class PeerNode:
    def __init__(
        self,
        transport: Transport,
        trainer: Trainer,
        config: SessionConfig,
        *,
        min_peers: int = 2,
        topic: str = "peers",
        beat_s: float = 1.0,
        peer_timeout_s: float = 5.0,
        recheck_s: float | None = None,
        discovery_timeout_s: float | None = None,
        executor: Executor | None = None,
        evaluator: Evaluator | None = None,
        bus: EventBus | None = None,
        seed_index: int | None = None,
        initial: Params | None = None,
    ) -> None:
        self.peer_id = transport.node_id
        # The index that seeds this peer's local training: a demo peer's data part, so that its
        # minibatch order is the one client i of the star topology uses; else drawn from the id.
        self._seed_index = seed_index if seed_index is not None else int(self.peer_id[:8], 16) % 1_000_003
        self.transport = transport
        self.bus = bus or EventBus()
        self.config = config
        self.trainer = trainer
        self.evaluator = evaluator  # held-out data: each peer reports the global model's accuracy
        self.strategy = parse_strategy(config.strategy)
        self.codec = PeerUpdates(config, trainer.initial_params(config.seed).spec)
        self.spec = self.codec.spec
        timeout_s = discovery_timeout_s or config.registration_timeout_s
        self.discovery = PeerDiscovery(min_peers, timeout_s, initial, self.spec)
        self.topic = topic
        self.beat_s = beat_s
        # After the deadline, how often a round without a commit is looked at again (bounded).
        self.recheck_s = recheck_s if recheck_s is not None else peer_timeout_s + beat_s
        self.view = PeerView(peer_timeout_s)
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"fedhive-peer-{self.peer_id[:8]}")
        self._own_executor = executor is None
        self.params: Params | None = None
        self.have = NO_MODEL  # the round whose model we hold
        self.digest = ""
        self._round: PeerRound | None = None
        # Next round's updates, which may come first: kept as messages, because a compressed
        # update is a delta that only decodes onto the next round's model, which we lack yet.
        self._early: dict[int, dict[str, Message]] = {}
        self.history: list[PeerRoundCompleted] = []
        b = self.bus
        b.on(ev.MessageIn, self._on_message)
        b.on(Beat, self._on_beat)
        b.on(RoundCheck, self._on_check)
        b.on(Trained, self._on_trained)

    # A peer whose model is older than the round before ours gets ours from this round's leader.
    handoff_lag = 1

    @staticmethod
    def new_id() -> str:
        return new_peer_id()

    async def run(self) -> list[PeerRoundCompleted]:
        """Take part until ``config.rounds`` rounds are done; raises ``SessionFailed`` if it cannot."""
        await self.transport.subscribe(self.topic)
        receiver = asyncio.create_task(self._receive(), name=f"peer-{self.peer_id[:8]}-receive")
        try:
            await self._announce("hello")
            self.bus.call_later(self.beat_s, Beat())
            await self.bus.run()
        finally:
            await stop_tasks([receiver], owner=f"peer {self.peer_id[:8]}")
            if self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
        return self.history

    async def leave(self) -> None:
        """Say goodbye so the others need not wait out our timeout, and stop."""
        await self._announce("bye")
        self.bus.stop()

    async def _receive(self) -> None:
        async for message in self.transport:
            if message.sender == self.peer_id:
                continue  # our own broadcasts: we acted on them when we sent them
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return
        self.bus.stop(TransportError(f"peer {self.peer_id}: transport closed"))

    # -- membership --------------------------------------------------------------------------------
    async def _on_beat(self, _: Beat) -> None:
        if self.bus.stopped:
            return
        self.bus.call_later(self.beat_s, Beat())
        for gone in self.view.expire():
            log.warning("peer %s: %s is gone (silent for %.0f s)", self.peer_id[:8], gone[:8], self.view.timeout_s)
        await self._announce("beat")
        if self.params is None:
            await self._maybe_seed()
        else:
            await self._maybe_commit()

    async def _maybe_seed(self) -> None:
        alive, model_held = [*self.view.alive(), self.peer_id], bool(self.view.holding(0))
        reason = self.discovery.gave_up(len(alive), model_held)
        if reason is not None:
            self._fail(reason)
        elif self.discovery.is_seeder(self.peer_id, alive, model_held):
            seed = self.discovery.seed_model(self.trainer, self.config.seed)
            log.info("peer %s: seeding the model for %d peers", self.peer_id[:8], len(alive))
            await self._install(seed, 0, [self.peer_id, *sorted(set(alive) - {self.peer_id})])
            model = PeerUpdateBody.model_construct(type="model", digest=self.digest, order=self._order())
            await self._publish(Kind.PEER_UPDATE, 0, model, seed)

    async def _announce(self, kind: str) -> None:
        await self._publish(Kind.ANNOUNCE, max(self.have, 0), AnnounceBody.model_construct(type=kind, have=self.have))

    # -- messages ----------------------------------------------------------------------------------
    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        kind, have = None, None
        try:
            if msg.kind is Kind.ANNOUNCE:
                announce = parse_body(AnnounceBody, msg)
                kind, have = announce.type, announce.have
            elif msg.kind is Kind.PEER_UPDATE:
                kind = parse_body(PeerUpdateBody, msg).type
            if msg.kind is Kind.ANNOUNCE and kind in ("hello", "beat") and have is not None:
                await self._on_announce(msg, have)
            elif msg.kind is Kind.ANNOUNCE and kind == "bye":
                self.view.forget(msg.sender)
                await self._maybe_commit()
            elif msg.kind is Kind.ANNOUNCE and kind == "commit":
                self.view.seen(msg.sender)
                await self._on_commit(msg)
            elif msg.kind is Kind.PEER_UPDATE and kind == "update":
                self._on_update(msg)
                await self._apply_pending()
                await self._maybe_commit()
            elif msg.kind is Kind.PEER_UPDATE and kind == "model":
                await self._on_model(msg)
            else:
                log.warning("peer %s: ignored %s/%s from %s", self.peer_id[:8], msg.kind, kind, msg.sender[:8])
        except FedhiveError as exc:
            log.warning("peer %s: rejected %s from %s: %s", self.peer_id[:8], msg.kind, msg.sender[:8], exc)

    async def _on_announce(self, msg: Message, have: int) -> None:
        new = self.view.seen(msg.sender, have)
        if new and parse_body(AnnounceBody, msg).type == "hello":
            await self._announce("beat")  # so that a newcomer learns of us now, not a beat later
        r = self._round
        if r is not None and have < r.round - self.handoff_lag and self._leader(r) == self.peer_id:
            # A newcomer (or a peer that fell behind): as this round's leader we hand it our model.
            body = PeerUpdateBody.model_construct(type="model", digest=self.digest, order=r.order).to_body()
            assert self.params is not None
            await self._send(
                msg.sender, make(Kind.PEER_UPDATE, self.peer_id, round=self.have, body=body, payload=self.params)
            )

    def _on_update(self, msg: Message) -> None:
        env = msg.envelope
        self.view.seen(msg.sender, env.round - 1)
        r = self._round
        if r is None or env.round not in (r.round, r.round + 1) or (env.round == r.round and r.commit is not None):
            log.info("peer %s: dropped update from %s for round %d", self.peer_id[:8], msg.sender[:8], env.round)
            return
        if env.round == r.round:
            assert self.params is not None
            r.updates[msg.sender] = self.codec.decode(msg, self.params)
        else:
            self._early = {env.round: {**self._early.get(env.round, {}), msg.sender: msg}}

    async def _on_model(self, msg: Message) -> None:
        env = msg.envelope
        if env.round <= self.have and not (env.round == 0 and self._prefer_seed(msg.sender)):
            return
        params = payload_params(msg, self.spec, max_bytes=self.config.max_update_bytes, what="model")
        body = parse_body(PeerUpdateBody, msg)
        if params_digest(params) != body.digest:
            raise FedhiveError(f"model from {msg.sender} does not match its digest")
        refusal = self.discovery.refusal(msg.sender, body.digest) if env.round == 0 else None
        if refusal is not None:
            self._fail(refusal)
            return
        order = body.order or [msg.sender]
        self.view.seen(msg.sender, env.round)
        log.info("peer %s: took the model of round %d from %s", self.peer_id[:8], env.round, msg.sender[:8])
        await self._install(params.copy(), env.round, order)

    def _prefer_seed(self, sender: str) -> bool:
        """Two peers seeded at once (they had not heard of each other): all keep the lower id's seed,
        as long as round 1 is not yet committed."""
        r = self._round
        return self.have == 0 and r is not None and r.commit is None and bool(r.order) and sender < r.order[0]

    # -- rounds ------------------------------------------------------------------------------------
    def _order(self) -> list[str]:
        return self._round.order if self._round else []

    async def _install(self, params: Params, round: int, order: list[str]) -> None:
        """Hold the model of ``round`` and start the next round on it."""
        self.params, self.have, self.digest = params, round, params_digest(params)
        await self._announce("beat")
        if round >= self.config.rounds:
            self.bus.stop()
            return
        r = PeerRound(round + 1, order, self.digest, time.monotonic())
        r.updates, self._early = self.codec.decode_early(self.peer_id, self._early.get(round + 1, {}), params), {}
        self._round = r
        self.bus.call_later(self.config.round_timeout_s, RoundCheck(r.round))
        fit = self.config.fit_config(r.round, self._seed_index)
        trainer, base, digest = self.trainer, params, self.digest
        fut = asyncio.get_running_loop().run_in_executor(self._executor, trainer.fit, base, fit)
        fut.add_done_callback(lambda f: self._trained(f, r.round, digest))

    def _trained(self, fut: asyncio.Future[FitResult], round: int, digest: str) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and not isinstance(exc, FedhiveError):
            self.bus.stop(exc)  # a bug in the trainer: end loudly
        elif exc is not None:
            log.warning("peer %s: training failed in round %d: %s", self.peer_id[:8], round, exc)
        else:
            self.bus.emit(Trained(round, digest, fut.result()))

    async def _on_trained(self, event: Trained) -> None:
        r = self._round
        if r is None or r.round != event.round or r.base_digest != event.base_digest or r.commit is not None:
            return  # the round moved on without us: a slow peer's update is late, as anyone's would be
        res = event.result
        assert self.params is not None  # the round's base: r.base_digest is its digest
        payload, encoding, r.updates[self.peer_id] = self.codec.encode_own(self.peer_id, res, self.params)
        body = PeerUpdateBody.model_construct(
            type="update", num_examples=res.num_examples, metrics=dict(res.metrics), **encoding
        )
        await self._publish(Kind.PEER_UPDATE, r.round, body, payload)
        await self._maybe_commit()

    async def _maybe_commit(self, *, deadline: bool = False) -> None:
        """As leader: commit once every peer we expect has delivered (or, at the deadline, what came)."""
        r = self._round
        if r is None or r.commit is not None or r.pending is not None or self._leader(r) != self.peer_id:
            return
        alive = set(self.view.alive())
        # Whoever is alive and holds the round's base model, plus ourselves: a peer that died is
        # dropped from ``alive`` after ``peer_timeout_s``, so we wait at most that (or the deadline).
        expected = self.view.holding(r.round - 1) | (set(r.order) & alive) | {self.peer_id}
        if not deadline and not expected <= r.updates.keys():
            return
        await self._commit(r)

    async def _commit(self, r: PeerRound) -> None:
        need = self.config.quorum_size(len(set(r.order) | r.updates.keys()))
        if len(r.updates) < need:
            return  # the check at the (extended) deadline decides whether to wait longer or give up
        ids = sorted(r.updates)
        await self._publish(
            Kind.ANNOUNCE, r.round, AnnounceBody.model_construct(type="commit", ids=ids, base=r.base_digest)
        )
        await self._apply(r, ids)

    async def _on_commit(self, msg: Message) -> None:
        env = msg.envelope
        r = self._round
        if r is None or env.round != r.round or r.commit is not None or r.pending is not None:
            return
        commit = parse_body(AnnounceBody, msg)
        r.pending = commit.ids
        if commit.base != r.base_digest:
            r.pending_since = -1.0  # we hold another model than the leader: resync at the next check
        else:
            r.pending_since = time.monotonic()
        # An update of the commit may still be in flight (broadcasts of different peers race):
        # give it a beat before asking for the model afresh.
        self.bus.call_later(self.beat_s, RoundCheck(r.round))
        await self._apply_pending()

    async def _apply_pending(self) -> None:
        r = self._round
        ready = r is not None and r.commit is None and r.pending is not None and r.pending_since >= 0
        if ready and r is not None and r.pending is not None and set(r.pending) <= r.updates.keys():
            await self._apply(r, r.pending)

    async def _resync(self, r: PeerRound) -> None:
        log.warning("peer %s: out of step in round %d; asking its leader for the model", self.peer_id[:8], r.round)
        await self._publish(Kind.ANNOUNCE, r.round, AnnounceBody.model_construct(type="hello", have=NO_MODEL))

    async def _apply(self, r: PeerRound, ids: list[str]) -> None:
        r.commit = ids
        assert self.params is not None
        updates = {i: r.updates[i] for i in ids}
        # Aggregation and evaluation leave the loop free for beats; not the training executor,
        # which may still be busy with a late peer's own (now useless) training.
        new, metrics = await asyncio.get_running_loop().run_in_executor(
            None, merge_round, self.strategy, self.params, updates, r.round, self.evaluator
        )
        done = PeerRoundCompleted(self.peer_id, r.round, params_digest(new), ids, metrics)
        self.history.append(done)
        self.bus.emit(done)
        log.info(
            "peer %s: round %d done with %d updates, digest %s", self.peer_id[:8], r.round, len(ids), done.digest[:12]
        )
        await self._install(new, r.round, ids)

    def _leader(self, r: PeerRound) -> str | None:
        """The first of the round's order that is still alive: when the leader falls silent for
        ``peer_timeout_s`` the next one leads, without waiting for the deadline."""
        alive = set(self.view.alive()) | {self.peer_id}
        return next((p for p in r.order if p in alive), None)

    async def _on_check(self, event: RoundCheck) -> None:
        r = self._round
        if r is None or r.round != event.round or r.commit is not None:
            return
        if r.pending is not None:
            await self._resync(r)  # a commit came but we cannot follow it: never commit ourselves
        elif time.monotonic() - r.started >= self.config.round_timeout_s:
            await self._maybe_commit(deadline=True)
        if self._round is not r:
            return  # committed: the next round is under way
        r.extensions += 1
        limit = self.config.max_round_retries + len(r.order) + 1
        if r.extensions > limit:
            self._fail(
                f"round {r.round}: no commit within {time.monotonic() - r.started:.0f} s ({len(r.updates)} updates)"
            )
            return
        self.bus.call_later(self.recheck_s, RoundCheck(r.round))

    # -- sending -------------------------------------------------------------------------------------
    async def _publish(self, kind: Kind, round: int, body: Body, payload: Params | None = None) -> None:
        message = make(kind, self.peer_id, round=round, body=body.to_body(), payload=payload)
        try:
            await self.transport.publish(self.topic, message)
        except TransportError as exc:
            log.warning("peer %s: could not broadcast %s: %s", self.peer_id[:8], kind, exc)

    async def _send(self, to: str, message: Message) -> None:
        try:
            await self.transport.send(to, message)
        except TransportError as exc:
            log.warning("peer %s: could not send %s to %s: %s", self.peer_id[:8], message.kind, to[:8], exc)

    def _fail(self, reason: str) -> None:
        log.error("peer %s: %s", self.peer_id[:8], reason)
        self.bus.stop(SessionFailed(reason))
