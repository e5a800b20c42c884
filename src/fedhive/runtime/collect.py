"""Collecting one round's answers: updates, a host's or a combiner's partials, errors.

A ``Collector`` belongs to a node that runs rounds (a coordinator, a combiner). The node's round
loop opens a round, sends TRAIN and then ``await collector.wait(round)``; the node's message
handlers hand every answer to the collector, which checks it (selected? late? duplicate? a valid
payload?), folds it into the round's aggregator and, once every selected participant has answered
or failed, wakes the loop. The deadline is the loop's: ``wait`` returns at it whatever came.

Claim-checked payloads received for a round are held until the round is aggregated, then given
back to the artifact store (``claim_keeper``): the store does not grow by every update.

With the session's ``UpdateLimits`` every update is weighed with its capped example count and
screened (finite, not exploded, within ``max_update_norm``) as it is folded; the collector keeps
how far each accepted update moved the model (weight times distance), so that a round whose
aggregate is refused anyway can be tried again without the update that moved it most
(``exclude``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from fedhive.core.bodies import ErrorBody, PartialBody, UpdateBody, attempt_of, parse_body
from fedhive.core.envelope import Deferred, Message
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import FedhiveError, PayloadError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.claim_keeper import give_back
from fedhive.runtime.hosted import HostDirectory, fold_members
from fedhive.runtime.inline_executor import run_job
from fedhive.runtime.partials import partial_size, raw_copies, read_partial
from fedhive.runtime.payloads import OFFLOAD_BYTES, payload_params, payload_size
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.update_limits import UpdateLimits
from fedhive.strategies.base import Partial, Update
from fedhive.strategies.screening import UpdateScreen

log = logging.getLogger("fedhive.coordinator")  # the node that runs rounds

MAX_EXAMPLES = 10**9


@dataclass
class CollectSettings:
    spec: ParamSpec
    max_update_bytes: int
    compression: str = "none"
    seen: Callable[[str], None] = field(default=lambda _c: None)  # a participant was heard from


class Collector:
    def __init__(
        self, bus: EventBus, executor: Executor, hosts: HostDirectory, limits: UpdateLimits | None = None
    ) -> None:
        self.bus = bus
        self.executor = executor
        self.hosts = hosts
        self.limits = limits
        self.current: RoundState | None = None
        self.base: Params | None = None  # the round's global model: compressed updates are deltas from it
        self.screen: UpdateScreen | None = None  # the round's, when the session has limits
        self.moves: dict[str, float] = {}  # accepted client -> weight * distance from the global model
        self.excluded: dict[str, str] = {}  # client -> why its updates are refused in this round
        self._excluded_round = 0

    # -- the loop's side --------------------------------------------------------------------------
    def open(self, r: RoundState, base: Params) -> RoundState:
        self.current, self.base = r, base
        self.screen = self.limits.screen(base) if self.limits is not None else None
        self.moves = {}
        if r.round != self._excluded_round:
            self.excluded, self._excluded_round = {}, r.round
        return r

    def exclude(self, r: RoundState, reason: str) -> str | None:
        """Refuse, in the next attempts at round ``r``, the accepted update that moved the model
        most (its weight times its distance from the global model); returns its sender, or None
        when no update of ``r`` was screened here (a host's or a combiner's sums)."""
        candidates = {c: m for c, m in self.moves.items() if c in r.accepted}
        if not candidates:
            return None
        worst = max(sorted(candidates), key=candidates.__getitem__)
        self.excluded[worst] = reason
        self._excluded_round = r.round
        return worst

    async def wait(self, r: RoundState, timeout_s: float) -> None:
        """Until every selected participant answered (or failed), or the deadline."""
        try:
            async with asyncio.timeout(timeout_s):
                await r.done.wait()
        except TimeoutError:
            pass
        r.closing = True

    def close(self, r: RoundState) -> None:
        """The round takes no more answers; its claim checks go back after what is queued."""
        r.closing = True
        if self.current is r:
            self.current = None
        give_back(self.executor, r.claims)

    # -- answers ------------------------------------------------------------------------------------
    def waiting_for(self, msg: Message) -> RoundState | None:
        """The current round if it still waits for an answer from this message's sender."""
        r = self.current
        if r and not r.closing and msg.envelope.round == r.round and msg.sender in r.chosen:
            return None if r.answered_by(msg.sender) else r
        return None

    def fail(self, r: RoundState, client: str, reason: str) -> None:
        if not r.closing and client in r.chosen and not r.answered_by(client):
            r.failed[client] = reason
            r.check_done()

    def reject(self, msg: Message, reason: str) -> None:
        log.warning("rejected update from %s in round %d: %s", msg.sender, msg.envelope.round, reason)
        self.bus.emit(ev.UpdateRejected(msg.envelope.round, msg.sender, reason))
        r = self.waiting_for(msg)
        if r is not None and reason != "duplicate update":
            self.fail(r, msg.sender, f"sent an invalid update: {reason}")

    def on_error(self, msg: Message) -> None:
        reason = parse_body(ErrorBody, msg).reason
        log.warning("client %s reports an error in round %d: %s", msg.sender, msg.envelope.round, reason)
        r = self.waiting_for(msg)
        if r is not None:
            self.fail(r, msg.sender, f"reported an error: {reason}")

    def _open_round_for(self, msg: Message, names: list[str]) -> RoundState | None:
        """The round ``msg`` answers, or None (it is late: logged and reported per client)."""
        self.hold_claim(msg)
        r, env = self.current, msg.envelope
        if r is None or r.closing or env.round != r.round or attempt_of(msg) != r.attempt:
            log.info("dropped late %s from %s for round %d", msg.kind.value, msg.sender, env.round)
            for c in names:
                self.bus.emit(ev.UpdateRejected(env.round, c, "late"))
            return None
        return r

    async def on_update(self, msg: Message, settings: CollectSettings) -> None:
        settings.seen(msg.sender)
        r = self._open_round_for(msg, [msg.sender])
        if r is None:
            return
        if msg.sender not in r.chosen:
            self.reject(msg, "sender was not selected for this round")
            return
        if r.answered_by(msg.sender):
            self.reject(msg, "duplicate update")
            return
        if msg.sender in self.excluded:
            self.reject(msg, self.excluded[msg.sender])
            return
        body = parse_body(UpdateBody, msg)
        num_examples = body.num_examples
        if self.limits is not None:
            num_examples = self.limits.weight(msg.sender, num_examples, r.round)
        metrics = body.metrics
        nbytes = payload_size(msg)
        decode = functools.partial(payload_params, compression=settings.compression, base=self.base)
        what = f"update from {msg.sender}"
        screen, moves = self.screen, self.moves  # this round's, even if folded after it closed

        def fold() -> None:
            # Fetch (a deferred claim check), decode, validate, screen and fold in one go: the
            # update's bytes live only for this call, so the node holds one update at a time.
            params = decode(msg, settings.spec, max_bytes=settings.max_update_bytes, what=what)
            if screen is not None:
                distance, refused = screen.refusal(params)
                if refused is not None:
                    raise PayloadError(f"update {refused}")
                moves[msg.sender] = num_examples * distance
            r.aggregator.add(Update(msg.sender, params, num_examples, metrics))

        if nbytes > OFFLOAD_BYTES:
            await run_job(self.executor, fold)
        else:
            fold()
        if r.closing:  # the round moved on while we folded
            return
        r.accepted.add(msg.sender)
        r.reports[msg.sender] = (num_examples, metrics)
        self.bus.emit(ev.UpdateAccepted(r.round, msg.sender, num_examples, metrics, nbytes))
        r.check_done()

    async def on_hosted_partial(self, msg: Message, settings: CollectSettings) -> None:
        """A ``ClientHost``'s answer for a chunk of its clients (``runtime.hosted``): each member
        is accepted and each failure recorded as if it had come in a message of its own."""
        members, failures = self.hosts.answer_of(msg)
        named = [m.client_id for m in members] + [c for c, _ in failures]
        r = self._open_round_for(msg, named)
        if r is None:
            return
        # Set operations, not a test per client: a host's partial names up to 64 clients.
        if not r.chosen.issuperset(named) or not r.accepted.isdisjoint(named) or not r.failed.keys().isdisjoint(named):
            raise ProtocolError("a host's partial names clients this round does not wait for")
        for c, reason in failures:
            log.warning("rejected update from %s in round %d: %s", c, r.round, reason)
            self.bus.emit(ev.UpdateRejected(r.round, c, reason))
            r.failed[c] = f"sent no valid update: {reason}"
        if members:
            fold = functools.partial(
                fold_members, r.aggregator, msg, members, settings.spec, max_update_bytes=settings.max_update_bytes
            )
            try:
                if payload_size(msg) > OFFLOAD_BYTES:
                    await run_job(self.executor, fold)
                else:
                    fold()
            except FedhiveError as exc:
                for m in members:
                    self.bus.emit(ev.UpdateRejected(r.round, m.client_id, str(exc)))
                    r.failed[m.client_id] = f"sent an invalid update: {exc}"
                r.check_done()
                raise
            if r.closing:
                return
            # Counted as the UPDATE each member's own node would have sent (hosts do not compress),
            # so that byte figures mean the same with and without a host.
            size = settings.spec.nbytes
            for m in members:
                r.accepted.add(m.client_id)
                r.reports[m.client_id] = (m.num_examples, m.metrics)
                self.bus.emit(ev.UpdateAccepted(r.round, m.client_id, m.num_examples, m.metrics, size))
        r.check_done()

    async def on_combiner_partial(
        self,
        msg: Message,
        settings: CollectSettings,
        vouches: Callable[[str, str], bool],
        *,
        combiners_draw: bool = False,
    ) -> None:
        """A combiner's one answer for its clients: merged sums (FedAvg) or its clients' raw updates;
        ``members`` names each client behind it (its examples and metrics: rows of their own).
        With ``combiners_draw`` (the strategy's Poisson sampling, done by each combiner) it may
        also be ``none``: the combiner drew none of its clients, an answer with nothing to fold."""
        settings.seen(msg.sender)
        r = self._open_round_for(msg, [msg.sender])
        if r is None:
            return
        if msg.sender not in r.chosen:
            raise ProtocolError("sender was not selected for this round")
        if r.answered_by(msg.sender):
            self.reject(msg, "duplicate update")
            return
        if parse_body(PartialBody, msg).mode == "none":
            self._nobody_drawn(msg, r, combiners_draw)
            return
        nbytes = payload_size(msg)
        fold = functools.partial(_fold_partial, msg, r, settings)
        part = await run_job(self.executor, fold) if nbytes > OFFLOAD_BYTES else fold()
        if r.closing:
            return
        _count, examples, metrics = partial_size(part)
        r.accepted.add(msg.sender)
        self.bus.emit(ev.UpdateAccepted(r.round, msg.sender, examples, metrics, nbytes))
        body = parse_body(PartialBody, msg)
        if body.members is not None:
            members = body.member_list()
            if any(not vouches(msg.sender, m.client_id) for m in members):
                raise ProtocolError(f"{msg.sender} reports clients that are not assigned to it")
            for m in members:
                self.bus.emit(ev.UpdateAcceptedVia(r.round, m.client_id, m.num_examples, m.metrics, msg.sender))
        r.check_done()

    def _nobody_drawn(self, msg: Message, r: RoundState, combiners_draw: bool) -> None:
        if not combiners_draw:
            raise ProtocolError(f"{msg.sender} sent no clients' updates, but it was to train all of its clients")
        body = parse_body(PartialBody, msg)
        if body.members or body.failures or body.clients:
            raise ProtocolError(f"{msg.sender}: a 'none' partial from a combiner names no clients")
        log.info("round %d: %s drew none of its clients", r.round, msg.sender)
        r.accepted.add(msg.sender)  # answered as asked: its draw, at the strategy's rate, was empty
        r.check_done()

    # -- claim checks -------------------------------------------------------------------------------
    def hold_claim(self, msg: Message) -> None:
        """A claim-checked payload goes back to the store when its round is aggregated, or at once
        if no round waits for it."""
        p = msg.payload
        if not isinstance(p, Deferred):
            return
        r = self.current
        if r is not None and not r.closing and msg.envelope.round == r.round:
            r.claims.append(p)
        else:
            give_back(self.executor, [p])


def _fold_partial(msg: Message, r: RoundState, settings: CollectSettings) -> Partial | list[Update]:
    copies = raw_copies(msg)
    part = read_partial(msg, settings.spec, max_bytes=settings.max_update_bytes * min(copies, 64))
    if isinstance(part, Partial):
        if not r.aggregator.mergeable:
            raise ProtocolError("this session's strategy cannot merge partial sums; send raw updates")
        r.aggregator.merge(part)
    else:
        for update in part:
            r.aggregator.add(update)
    return part
