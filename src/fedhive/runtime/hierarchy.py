"""The coordinator of a hierarchical federation: combiners are its clients, and it assigns clients
to combiners.

The round loop is the coordinator's own (selection, deadline, quorum, retries); only who takes part
differs, which is this module's ``CombinerMembership``, handed to a ``Coordinator``: each selected
combiner answers a round with one ``partial`` (``runtime.partials``), which is merged (FedAvg:
exact float64 sums) or, for a strategy that cannot merge, whose raw updates are added one by one.
``RoundCompleted.num_updates`` counts client updates, not combiners.

Clients connect outbound only: a client asks the coordinator for a combiner (``register`` with
``role: client``) and gets the least loaded ONLINE one. A combiner that stops beating goes OFFLINE
here and is not selected for the next round; its clients, who stop hearing it, ask again (naming
it in ``avoid``) and are sent to another. The session starts once ``min_combiners`` combiners
report that together they hold ``config.min_clients`` registered clients.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from fedhive.core.bodies import EvaluateBody, HeartbeatBody, RegisterBody, RegisteredBody, TrainBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.coordinator import Coordinator, SessionResult
from fedhive.runtime.evaluation import EvalRound
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.hierarchy")


class HierarchicalCoordinator:
    """A ``Coordinator`` whose participants are combiners (``CombinerMembership``)."""

    def __init__(
        self,
        config: SessionConfig,
        transport: Transport,
        initial_params: Params,
        *,
        min_combiners: int = 1,
        **kwargs: Any,
    ) -> None:
        # Once started, a round goes on with any one combiner (a combiner that died has had its
        # clients moved to the others); the minima to start with are the membership's.
        def membership(c: Coordinator) -> CombinerMembership:
            return CombinerMembership(c, min_combiners=min_combiners, min_clients=config.min_clients)

        strategy: Strategy = kwargs.pop("strategy", None) or parse_strategy(config.strategy)
        update: dict[str, object] = {"min_clients": 1}
        if strategy.client_sampling() is not None:
            # Its accounting assumes each client drawn on its own (strategies/sampling.py): every
            # combiner gets the TRAIN and draws its own clients at the strategy's rate. A fraction
            # of combiners would leave whole groups out together.
            _check_combiners_strategy(config, strategy)
            if config.fraction < 1 or config.max_clients:
                log.warning("%s samples clients itself: fraction and max_clients are not used", strategy.name)
            update.update(fraction=1.0, max_clients=None)
        flat = config.model_copy(update=update)
        self.coordinator = Coordinator(
            flat, transport, initial_params, membership=membership, strategy=strategy, **kwargs
        )
        self.bus = self.coordinator.bus
        self.registry = self.coordinator.registry

    @property
    def assigned(self) -> dict[str, str]:
        membership = self.coordinator.membership
        assert isinstance(membership, CombinerMembership)
        return membership.assigned

    async def run(self) -> SessionResult:
        return await self.coordinator.run()


def _check_combiners_strategy(config: SessionConfig, strategy: Strategy) -> None:
    """Combiners clip and draw by the session's ``strategy`` spec (its ENABLE): a strategy object
    given to the coordinator that differs from it would have its guarantees broken below it."""
    spec = parse_strategy(config.strategy).config()
    if spec != strategy.config():
        raise ConfigError(
            f"the combiners clip and sample clients by the session's strategy {config.strategy!r}, "
            f"which differs from the coordinator's {strategy.name} ({strategy.config()})"
        )


class CombinerMembership:
    def __init__(self, coordinator: Coordinator, *, min_combiners: int, min_clients: int) -> None:
        self.coordinator = coordinator
        self.down = coordinator.down
        self.min_combiners = min_combiners
        self.min_total_clients = min_clients
        self.assigned: dict[str, str] = {}  # client -> combiner
        self.combiner_clients: dict[str, int] = {}  # combiner -> clients registered with it
        # Each combiner draws its own clients (the strategy's Poisson sampling): a draw may be empty.
        self.combiners_draw = coordinator.strategy.client_sampling() is not None

    async def on_message(self, msg: Message) -> bool:
        role = parse_body(RegisterBody, msg).role if msg.kind is Kind.REGISTER else None
        if role == "client":
            await self._assign(msg)
        elif role == "combiner":
            await self._on_combiner(msg)
        elif msg.kind is Kind.REGISTER:
            raise ProtocolError("in a hierarchical session, register with role 'client' or 'combiner'")
        elif msg.kind is Kind.PARTIAL:
            try:
                await self.down.collector.on_combiner_partial(
                    msg, self.down.collect_settings(), self.vouches, combiners_draw=self.combiners_draw
                )
            except FedhiveError as exc:
                self.down.collector.reject(msg, str(exc))  # the combiner's whole answer counts as failed
        elif msg.kind is Kind.EVALUATION:
            self.down.on_evaluation(msg, self)
        elif msg.kind is Kind.HEARTBEAT and self._is_unknown_combiner(msg):
            await self._take_back_combiner(msg)
        else:
            return False
        return True

    async def send_train(self, selected: list[str], r: RoundState, body: Callable[[str], TrainBody]) -> list[str]:
        return await self._send(
            selected, Kind.TRAIN, r.round, lambda c: body(c).model_copy(update={"attempt": r.attempt}).to_body()
        )

    async def send_evaluate(self, selected: list[str], e: EvalRound, body: EvaluateBody) -> list[str]:
        sent = body.to_body()
        return await self._send(selected, Kind.EVALUATE, e.round, lambda _c: sent)

    async def _send(
        self, combiners: list[str], kind: Kind, rnd: int, body: Callable[[str], dict[str, Any]]
    ) -> list[str]:
        """The round's model to each combiner; returns those that could not be reached."""
        down = self.down
        return await down.send_all(
            combiners,
            lambda c: make(
                kind, down.sender_id, session_id=down.session_id, round=rnd, body=body(c), payload=down.params
            ),
        )

    def vouches(self, sender: str, client: str) -> bool:
        return self.assigned.get(client) == sender  # a combiner reports the clients assigned to it

    # -- membership ---------------------------------------------------------------------------------
    async def _assign(self, msg: Message) -> None:
        online = self.down.registry.online()
        if not self.down.started and len(online) < self.min_combiners:
            # Assigning now would pile every early client onto the first combiner up, and the
            # session would wait for the others to be staffed until it timed out. The client
            # asks again every second.
            log.info("%d of %d combiners ONLINE; client %s will ask again", len(online), self.min_combiners, msg.sender)
            return
        avoid = parse_body(RegisterBody, msg).avoid
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
        answer = RegisteredBody.model_construct(combiner=combiner).to_body()
        await self.down.send(msg.sender, self.down.message(Kind.REGISTERED, body=answer))

    async def _on_combiner(self, msg: Message) -> None:
        down, body = self.down, parse_body(RegisterBody, msg)
        assert body.clients is not None and body.num_examples is not None  # required of a combiner
        self.combiner_clients[msg.sender] = body.clients
        examples = body.num_examples
        info = down.registry.get(msg.sender)
        if info is None or info.status is PeerStatus.OFFLINE:
            previous = down.registry.register(msg.sender, examples)
            down.bus.emit(ev.ClientStatusChanged(msg.sender, PeerStatus.ONLINE, previous))
            if down.started:
                await self.coordinator.enable([msg.sender])  # a new combiner takes part from the next round
        else:
            down.seen(msg.sender)
            info.num_examples = examples
        interval = RegisteredBody.model_construct(heartbeat_interval_s=down.config.heartbeat_interval_s)
        reply = down.message(Kind.REGISTERED, body=interval.to_body())
        await down.send(msg.sender, reply)
        if not down.started and self.ready():
            await self.coordinator.start_session()

    def _is_unknown_combiner(self, msg: Message) -> bool:
        """A combiner's heartbeat (it names its clients) in this session, from a combiner that
        registered with an earlier process of this coordinator, which crashed: it does not know."""
        known = self.down.registry.get(msg.sender)
        return (
            (known is None or known.status is PeerStatus.OFFLINE)
            and parse_body(HeartbeatBody, msg).clients is not None
            and msg.envelope.session_id == self.down.session_id
        )

    async def _take_back_combiner(self, msg: Message) -> None:
        """Count it in as if it had registered, with the clients its heartbeat names (a resumed
        session starts again once the combiners that survived the crash are heard from)."""
        log.info("combiner %s is in session %s from before a restart; taking it back", msg.sender, self.down.session_id)
        clients = parse_body(HeartbeatBody, msg).clients
        body = RegisterBody.model_construct(role="combiner", clients=clients, num_examples=0).to_body()
        await self._on_combiner(make(Kind.REGISTER, msg.sender, session_id=msg.envelope.session_id, body=body))

    def _staffed(self) -> tuple[list[str], int]:
        staffed = [c for c in self.down.registry.online() if self.combiner_clients.get(c, 0) > 0]
        return staffed, sum(self.combiner_clients[c] for c in staffed)

    def ready(self) -> bool:
        staffed, total = self._staffed()
        return len(staffed) >= self.min_combiners and total >= self.min_total_clients

    def not_ready_reason(self) -> str:
        staffed, total = self._staffed()
        return (
            f"within {self.down.config.registration_timeout_s:.0f} s, {total} of the {self.min_total_clients} "
            f"required clients reached {len(staffed)} of the {self.min_combiners} required combiners"
        )
