"""Secure aggregation in a node that runs rounds over a broker: a coordinator or a combiner.

``SecureRounds.train_round`` replaces ``Downstream.train_round`` when the session has
``secure_aggregation`` on: it selects the clients as the plain round does, then runs the four
steps of ``SecAggServer`` with them (``secagg.wire`` for how each travels), and returns the round
with one merged ``Partial`` in its aggregator: the unmasked sum of the survivors' fixed-point
updates, decoded. The node never holds a client's update, nor a share it could read: shares
between clients are sealed end to end (AES-GCM under keys agreed by X25519) and only relayed here.

Each masked input brings its sender's public keys for its next round. When every client a round
selects has keys kept so (and none used yet), the round's TRAIN carries each client its part of
the roster and the keys step is skipped: three exchanges after the TRAIN instead of four. Kept
keys are used once: taken out for every selected client as its round starts, whichever way it
goes (a client told no roster forgets its own and advertises new ones).

Every step is bounded. The three short steps (keys, shares, unmasking: no training in them) end
when every client still in the round has answered, or after ``stage_timeout`` (a quarter of
``round_timeout_s``, at least 5 s, never past the round's deadline); the masked step, which waits
for the training, at the round's deadline. A client that reports an error or goes OFFLINE is
counted out at once (the collector marks it failed, and the step is checked again). Unmasking
ends as soon as every secret to rebuild has ``threshold`` answers (``SecAggServer.recoverable``):
a survivor that vanished after its masked input is not waited for, its self mask is rebuilt from
its neighbours' shares. A step that leaves some client's secret short of its threshold fails the
attempt in one line; the node's loop retries it like any missed quorum.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhive.core.bodies import TrainBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import FedhiveError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.downstream import Downstream, FitFor, Membership
from fedhive.runtime.inline_executor import run_job
from fedhive.runtime.payloads import OFFLOAD_BYTES, payload_params, payload_size
from fedhive.runtime.round_state import RoundState
from fedhive.secagg import wire
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, UnmaskRequest
from fedhive.secagg.quantise import FixedPoint
from fedhive.secagg.round import round_context
from fedhive.secagg.server import SecAggServer, session_graph_seed
from fedhive.secagg.settings import fixed_point, secure_weighting
from fedhive.strategies.base import Aggregator, Partial, Strategy
from fedhive.strategies.sampling import ClientSampling

log = logging.getLogger("fedhive.secagg")

MIN_STAGE_S = 5.0


def stage_timeout(round_timeout_s: float) -> float:
    """How long a short step (keys, shares, unmasking) waits for the clients still in the round."""
    return max(MIN_STAGE_S, round_timeout_s / 4)


@dataclass
class _Round(RoundState):
    """A secure round's state: a failure the collector records (an ERROR, a client gone OFFLINE)
    also wakes the step in progress, which then stops waiting for that client."""

    on_change: Callable[[], None] = field(default=lambda: None, repr=False)

    def check_done(self) -> None:
        super().check_done()
        self.on_change()


@dataclass
class _Step:
    name: str  # the ``secagg`` value the answers carry
    waiting: set[str]
    enough: Callable[[], bool] = lambda: False  # done before everyone answered (unmasking)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SecureRounds:
    def __init__(self, down: Downstream, strategy: Strategy) -> None:
        """Raises ``ConfigError`` in one line for a strategy that needs each client's update."""
        secure_weighting(strategy)
        self.down = down
        self._round: _Round | None = None
        self._step: _Step | None = None
        self._server: SecAggServer | None = None
        self._fixed: FixedPoint | None = None
        self._examples: dict[str, int] = {}  # survivor -> the example count it reported (not secret)
        self._ahead: dict[str, AdvertiseKeys] = {}  # client -> keys for its next round, from its masked input
        self._ahead_session = ""  # the session they were advertised in
        self._graph: tuple[str, bytes] = ("", b"")  # (session, its neighbour graph's seed)

    def _session_graph_seed(self) -> bytes:
        """One seed per session: the same clients keep the same neighbours (``server.session_graph_seed``)."""
        if self._graph[0] != self.down.session_id:
            self._graph = (self.down.session_id, session_graph_seed())
        return self._graph[1]

    # -- messages -----------------------------------------------------------------------------------
    async def on_message(self, msg: Message) -> bool:
        """Take the clients' answers of a secure round (every UPDATE; a PARTIAL while a round
        with clients of their own runs); False for anything else, which the node handles as usual
        (a host's PARTIAL in ``simulate``: the host summed its clients securely itself)."""
        if msg.kind is Kind.PARTIAL and self._round is not None:
            log.warning(
                "%s: rejected a partial from %s: secure aggregation sums clients one by one", self._me, msg.sender
            )
            return True
        if msg.kind is not Kind.UPDATE:
            return False
        self.down.seen(msg.sender)
        self.down.collector.hold_claim(msg)  # a claim-checked payload goes back after the round
        r, step, name = self._round, self._step, wire.stage_of(msg)
        if name is None:
            self.down.collector.reject(msg, "a plain update in a secure-aggregation session")
            return True
        attempt = msg.envelope.body.get("attempt", 0)
        if r is None or step is None or msg.envelope.round != r.round or attempt != r.attempt or name != step.name:
            log.info("%s: dropped a late or early secagg %r from %s for round %d", self._me, name, msg.sender,
                     msg.envelope.round)  # fmt: skip
            return True
        if msg.sender not in step.waiting:
            log.info("%s: dropped secagg %r from %s: not waited for", self._me, name, msg.sender)
            return True
        try:
            await self._take(name, msg)
            if self._step is not step:  # the step closed while a big masked input was decoded
                return True
        except FedhiveError as exc:
            log.warning("%s: round %d: rejected secagg %r from %s: %s", self._me, r.round, name, msg.sender, exc)
            self.down.bus.emit(ev.UpdateRejected(r.round, msg.sender, str(exc)))
            r.failed.setdefault(msg.sender, f"secure aggregation: {exc}")
        step.waiting.discard(msg.sender)
        self._check()
        return True

    async def _take(self, name: str, msg: Message) -> None:
        server, fp = self._server, self._fixed
        assert server is not None and fp is not None
        if name == "keys":
            server.add_keys(wire.read_keys(msg))
        elif name == "shares":
            server.add_shares(wire.read_shares(msg))
        elif name == "masked":
            examples = parse_body(wire.MaskedBody, msg).num_examples
            spec = wire.masked_spec(fp.vector_length(self.down.params.spec))
            decode = functools.partial(
                payload_params, msg, spec, max_bytes=spec.nbytes + 65536, what=f"masked input from {msg.sender}"
            )
            # A big vector is fetched and checked in the worker, as the collector does an update;
            # added to the sum here, in the loop (the round's steps run on it too).
            ahead = wire.read_next_keys(msg)
            step = self._step
            vector = (
                await run_job(self.down.collector.executor, decode) if payload_size(msg) > OFFLOAD_BYTES else decode()
            )
            if self._step is step:
                server.add_masked(MaskedInput(msg.sender, vector[wire.MASKED].view(np.uint64)))
                self._examples[msg.sender] = examples
                if ahead is not None:
                    self._ahead[msg.sender] = ahead
        else:
            server.add_unmask(wire.read_unmask_shares(msg))

    def _check(self) -> None:
        r, step = self._round, self._step
        if r is None or step is None:
            return
        step.waiting -= r.failed.keys()
        if not step.waiting or step.enough():
            step.done.set()

    @property
    def _me(self) -> str:
        return self.down.sender_id

    # -- a round ------------------------------------------------------------------------------------
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
        """As ``Downstream.train_round``: the round, closed for answers, its aggregator holding
        the secure sum of the survivors (``accepted``); or why it could not start."""
        down, config = self.down, self.down.config
        selected = down.select(rnd, attempt, sampling)
        if isinstance(selected, str):
            return selected
        direct, hosted = down.hosts.split(selected)
        if hosted and not direct:  # a client host sums its own clients securely (``secagg.host_link``)
            return await down.train_round(rnd, attempt, params, aggregator, membership, fit, sampling)
        if hosted:
            return (
                f"round {rnd}: secure aggregation cannot mix clients of a host ({next(iter(hosted))}) "
                "with clients on connections of their own"
            )
        r = _Round(rnd, attempt, selected, time.monotonic(), aggregator, on_change=self._check)
        r.index = down.index()
        down.params = params
        down.collector.open(r, params)
        down.bus.emit(ev.RoundStarted(rnd, attempt, selected))
        self._fixed = fp = fixed_point(config.secagg_clip, config.secagg_bits)
        label = f"{self._me}: round {rnd}" if self._me != "coordinator" else f"round {rnd}"
        self._server = server = SecAggServer(
            round_context(config.session_id, rnd, attempt),
            fp.vector_length(params.spec),
            config.secagg_threshold,
            neighbours=config.secagg_neighbours,
            label=label,
            graph_seed=self._session_graph_seed(),
        )
        self._round, self._examples = r, {}
        try:
            total = await self._steps(r, server, membership, fit)
            sums, weight, examples = fp.decode(total, params)
        except (SecAggError, ProtocolError) as exc:
            log.warning("%s: %s", self._me, exc)
            for c in r.selected:
                r.failed.setdefault(c, f"secure aggregation failed: {exc}")
            return r
        finally:
            self._round = self._step = None
            self._server = None
            r.closing = True
        survivors = sorted(server.survivors)
        r.aggregator.merge(Partial(sums, weight, examples, len(survivors), {}, 0.0))
        size = wire.masked_spec(fp.vector_length(params.spec)).nbytes
        for c in survivors:  # in the sum, whatever happened to them after their masked input
            r.failed.pop(c, None)
            r.accepted.add(c)
            r.reports[c] = (self._examples[c], {})
            down.bus.emit(ev.UpdateAccepted(rnd, c, self._examples[c], {}, size))
        return r

    def _keys_ahead(self, selected: Collection[str]) -> list[AdvertiseKeys] | None:
        """The keys every selected client advertised ahead (None: some did not); taken out either
        way, so that no key serves two rounds."""
        if self._ahead_session != self.down.session_id:
            self._ahead, self._ahead_session = {}, self.down.session_id
        kept = [self._ahead.pop(c, None) for c in selected]
        return [k for k in kept if k is not None] if all(k is not None for k in kept) else None

    async def _steps(self, r: _Round, server: SecAggServer, membership: Membership, fit: FitFor) -> Any:
        timeout = self.down.config.round_timeout_s
        deadline = r.started + timeout
        short = stage_timeout(timeout)
        took: dict[str, float] = {}
        ahead = self._keys_ahead(r.selected)
        if ahead is not None:
            # 1-2. The model and each client's part of the roster in one TRAIN (keys advertised
            # ahead): it seals its shares to its neighbours, then trains.
            for keys in ahead:
                server.add_keys(keys)
            roster = server.roster()
            step = self._open("shares", roster.ids)

            def train(c: str) -> TrainBody:
                return wire.train_with_roster(fit(c, r), r.attempt, roster.for_client(c))

            for c in await membership.send_train(r.selected, r, train):
                r.failed.setdefault(c, "could not be reached")
        else:
            # 1. The model (an ordinary TRAIN): each client advertises its keys, then trains.
            step = self._open("keys", r.selected)
            for c in await membership.send_train(r.selected, r, lambda c: fit(c, r)):
                r.failed.setdefault(c, "could not be reached")
            await self._wait(step, deadline, short, r)
            took["keys"] = time.monotonic() - r.started
            roster = server.roster()
            # 2. Each its part of the roster: it seals its shares to its neighbours.
            step = self._open("shares", roster.ids)
            await self._send(r, step, {c: wire.roster_body(r.attempt, roster.for_client(c)) for c in roster.ids})
        log.debug("%s: round %d: %d clients, %d neighbours, threshold %d", self._me, r.round, len(roster.ids),
                  roster.neighbours, roster.threshold)  # fmt: skip
        await self._wait(step, deadline, short, r)
        took["shares"] = time.monotonic() - r.started - sum(took.values())
        routed = server.routed()
        # 3. Each the ciphertexts sealed for it: it masks its update once trained.
        step = self._open("masked", routed)
        await self._send(r, step, {c: wire.routed_body(r.attempt, routed[c]) for c in routed})
        await self._wait(step, deadline, timeout, r)
        took["masked"] = time.monotonic() - r.started - sum(took.values())
        request = server.unmask_request()
        # 4. Each survivor who of its neighbours is in the sum and who dropped: their shares.
        step = self._open("unmask", request.survivors, server.recoverable)
        graph = roster.graph
        bodies = {
            c: wire.unmask_request_body(
                r.attempt, UnmaskRequest(request.survivors & (graph[c] | {c}), request.dropped & graph[c])
            )
            for c in request.survivors
        }
        await self._send(r, step, bodies)
        await self._wait(step, deadline, short, r)
        total = server.result()
        took["unmasking"] = time.monotonic() - r.started - sum(took.values())
        log.info(
            "%s: round %d: secure sum of %d clients (%d dropped before their masked input; keys %s); %s",
            self._me, r.round, len(request.survivors), len(request.dropped),
            "advertised ahead" if ahead is not None else "exchanged first",
            ", ".join(f"{name} {s:.2f} s" for name, s in took.items()),
        )  # fmt: skip
        return total

    def _open(self, name: str, clients: Collection[str], enough: Callable[[], bool] = lambda: False) -> _Step:
        r = self._round
        assert r is not None
        self._step = step = _Step(name, set(clients) - r.failed.keys(), enough)
        return step

    async def _send(self, r: _Round, step: _Step, bodies: Mapping[str, dict[str, Any]]) -> None:
        def build(c: str) -> Message:
            return make(Kind.TRAIN, self._me, session_id=self.down.session_id, round=r.round, body=bodies[c])

        for c in await self.down.send_all(sorted(step.waiting & bodies.keys()), build):
            r.failed.setdefault(c, "could not be reached")
        self._check()

    async def _wait(self, step: _Step, deadline: float, longest: float, r: _Round) -> None:
        self._check()
        left = min(deadline - time.monotonic(), longest)
        try:
            async with asyncio.timeout(max(0.0, left)):
                await step.done.wait()
        except TimeoutError:
            for c in sorted(step.waiting):
                log.warning("%s: round %d: no secagg %r from %s in time", self._me, r.round, step.name, c)
                r.failed.setdefault(c, f"sent no secagg {step.name!r} within {left:.0f} s")
        step.waiting.clear()
