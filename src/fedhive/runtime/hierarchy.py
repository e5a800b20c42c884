"""The coordinator of a hierarchical federation: combiners are its clients, and it assigns clients
to combiners.

Round logic is the coordinator's own (selection, deadline, quorum, retries), applied to combiners:
each selected combiner answers a round with one ``partial`` (``runtime.partials``), which is merged
(FedAvg: exact float64 sums) or, for a strategy that cannot merge, whose raw updates are added one
by one. ``RoundCompleted.num_updates`` counts client updates, not combiners.

Clients connect outbound only: a client asks the coordinator for a combiner (``register`` with
``role: client``) and gets the least loaded ONLINE one. A combiner that stops beating goes OFFLINE
here and is not selected for the next round; its clients, who stop hearing it, ask again (naming
it in ``avoid``) and are sent to another. The session starts once ``min_combiners`` combiners
report that together they hold ``config.min_clients`` registered clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import FedhiveError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.coordinator import COORDINATOR_ID, MAX_EXAMPLES, Coordinator
from fedhive.runtime.partials import MAX_RAW_UPDATES, partial_size, read_partial
from fedhive.runtime.payloads import OFFLOAD_BYTES, body_int, payload_size
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Partial, Update
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.hierarchy")


class HierarchicalCoordinator(Coordinator):
    def __init__(
        self,
        config: SessionConfig,
        transport: Transport,
        initial_params: Params,
        *,
        min_combiners: int = 1,
        **kwargs: Any,
    ) -> None:
        # The base class counts its direct participants, the combiners: once started, a round goes
        # on with any one of them (a combiner that died has had its clients moved to the others).
        # The minima to start with are ours.
        self.min_total_clients = config.min_clients
        self.min_combiners = min_combiners
        super().__init__(config.model_copy(update={"min_clients": 1}), transport, initial_params, **kwargs)
        self.assigned: dict[str, str] = {}  # client -> combiner
        self.combiner_clients: dict[str, int] = {}  # combiner -> clients registered with it

    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        role = msg.envelope.body.get("role") if msg.kind is Kind.REGISTER else None
        try:
            if role == "client":
                await self._assign(msg)
            elif role == "combiner":
                await self._on_combiner(msg)
            elif msg.kind is Kind.PARTIAL:
                await self._on_partial(msg)
            elif msg.kind is Kind.HEARTBEAT and self._is_unknown_combiner(msg):
                await self._take_back_combiner(msg)
            else:
                await super()._on_message(event)
        except FedhiveError as exc:
            log.warning("rejected %s from %s: %s", msg.kind, msg.sender, exc)
            if msg.kind is Kind.PARTIAL:
                self._reject_update(msg, str(exc))

    # -- membership ---------------------------------------------------------------------------------
    async def _assign(self, msg: Message) -> None:
        online = self.registry.online()
        if not self._started and len(online) < self.min_combiners:
            # Assigning now would pile every early client onto the first combiner up, and the
            # session would wait for the others to be staffed until it timed out. The client
            # asks again every second.
            log.info("%d of %d combiners ONLINE; client %s will ask again", len(online), self.min_combiners, msg.sender)
            return
        avoid = msg.envelope.body.get("avoid")
        choices = [c for c in online if c != avoid] or online
        if not choices:
            log.info("no combiner ONLINE yet for client %s; it will ask again", msg.sender)
            return
        current = self.assigned.get(msg.sender)
        if current in choices:  # a repeated request (its answer crossed the retry): same answer
            combiner = current
        else:
            load = Counter(c for c in self.assigned.values() if c in choices)
            combiner = min(choices, key=lambda c: (load[c], c))
        self.assigned[msg.sender] = combiner
        body = {"combiner": combiner}
        await self._send(
            msg.sender, make(Kind.REGISTERED, COORDINATOR_ID, session_id=self.config.session_id, body=body)
        )

    async def _on_combiner(self, msg: Message) -> None:
        body = msg.envelope.body
        self.combiner_clients[msg.sender] = body_int(body, "clients", low=0, high=MAX_RAW_UPDATES)
        examples = body_int(body, "num_examples", low=0, high=MAX_EXAMPLES)
        info = self.registry.get(msg.sender)
        if info is None or info.status is PeerStatus.OFFLINE:
            previous = self.registry.register(msg.sender, examples)
            self.bus.emit(ev.ClientStatusChanged(msg.sender, PeerStatus.ONLINE, previous))
            if self._started:
                await self._enable([msg.sender])  # a new combiner takes part from the next round
        else:
            self._mark_seen(msg.sender)
            info.num_examples = examples
        body_out = {"heartbeat_interval_s": self.config.heartbeat_interval_s}
        reply = make(Kind.REGISTERED, COORDINATOR_ID, session_id=self.config.session_id, body=body_out)
        await self._send(msg.sender, reply)
        if not self._started and self._ready():
            await self._start_session()

    def _is_unknown_combiner(self, msg: Message) -> bool:
        """A combiner's heartbeat (it names its clients) in this session, from a combiner that
        registered with an earlier process of this coordinator, which crashed: it does not know."""
        known = self.registry.get(msg.sender)
        return (
            (known is None or known.status is PeerStatus.OFFLINE)
            and "clients" in msg.envelope.body
            and msg.envelope.session_id == self.config.session_id
        )

    async def _take_back_combiner(self, msg: Message) -> None:
        """Count it in as if it had registered, with the clients its heartbeat names (a resumed
        session starts again once the combiners that survived the crash are heard from)."""
        sid = self.config.session_id
        log.info("combiner %s is in session %s from before a restart; taking it back", msg.sender, sid)
        clients = body_int(msg.envelope.body, "clients", low=0, high=MAX_RAW_UPDATES)
        body = {"role": "combiner", "clients": clients, "num_examples": 0}
        await self._on_combiner(make(Kind.REGISTER, msg.sender, session_id=msg.envelope.session_id, body=body))

    def _ready(self) -> bool:
        staffed = [c for c in self.registry.online() if self.combiner_clients.get(c, 0) > 0]
        total = sum(self.combiner_clients[c] for c in staffed)
        return len(staffed) >= self.min_combiners and total >= self.min_total_clients

    def _on_registration_deadline(self, _: ev.RegistrationDeadline) -> None:
        if not self._started:
            staffed = [c for c in self.registry.online() if self.combiner_clients.get(c, 0) > 0]
            total = sum(self.combiner_clients[c] for c in staffed)
            self._fail(
                f"within {self.config.registration_timeout_s:.0f} s, {total} of the {self.min_total_clients} required "
                f"clients reached {len(staffed)} of the {self.min_combiners} required combiners"
            )

    async def _on_register(self, msg: Message) -> None:
        raise ProtocolError("in a hierarchical session, register with role 'client' or 'combiner'")

    # -- partials -------------------------------------------------------------------------------------
    async def _on_partial(self, msg: Message) -> None:
        self._hold_claim(msg)
        r = self._round
        env = msg.envelope
        if msg.sender in self.registry:
            self._mark_seen(msg.sender)
        if r is None or r.closing or env.round != r.round or env.body.get("attempt", 0) != r.attempt:
            log.info("dropped late partial from %s for round %d", msg.sender, env.round)
            self.bus.emit(ev.UpdateRejected(env.round, msg.sender, "late"))
            return
        if msg.sender not in r.chosen:
            raise ProtocolError("sender was not selected for this round")
        if msg.sender in r.accepted or msg.sender in r.failed:
            self._reject_update(msg, "duplicate update")
            return
        nbytes = payload_size(msg)
        if nbytes > OFFLOAD_BYTES:  # decoding and merging a big model must not block the loop
            loop = asyncio.get_running_loop()
            part = await loop.run_in_executor(self._executor, self._fold, msg, r)
        else:
            part = self._fold(msg, r)
        if r is not self._round or r.closing:
            return
        _count, examples, metrics = partial_size(part)
        r.accepted.add(msg.sender)
        self.bus.emit(ev.UpdateAccepted(r.round, msg.sender, examples, metrics, nbytes))
        self._maybe_close()

    def _fold(self, msg: Message, r: RoundState) -> Partial | list[Update]:
        raw = msg.envelope.body.get("updates")
        copies = len(raw) if isinstance(raw, list) else 1
        part = read_partial(msg, self.spec, max_bytes=self.config.max_update_bytes * max(1, min(copies, 64)))
        if isinstance(part, Partial):
            if not r.aggregator.mergeable:
                raise ProtocolError(f"strategy {self.strategy.name} cannot merge partial sums; send raw updates")
            r.aggregator.merge(part)
        else:
            for update in part:
                r.aggregator.add(update)
        return part
