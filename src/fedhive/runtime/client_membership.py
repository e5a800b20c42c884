"""Clients as a node's participants: they register, are enabled, get TRAIN, answer with updates.

The ``Membership`` of a flat coordinator and of a combiner. A client registers with its example
count (and, behind a ``ClientHost``, the host that answers for it); it is answered with the
heartbeat interval the node expects. A client that registers while the session runs is enabled at
once and, if the round in progress selected it (it restarted and lost its TRAIN), sent that TRAIN
again, so that it can still count in the round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fedhive.core.bodies import EvaluateBody, RegisterBody, RegisteredBody, TrainBody, parse_body, seed_rows
from fedhive.core.envelope import Kind, Message, make
from fedhive.runtime import events as ev
from fedhive.runtime.downstream import Downstream
from fedhive.runtime.evaluation import EvalRound
from fedhive.runtime.hosted import host_beat
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.round_state import RoundState

log = logging.getLogger("fedhive.coordinator")


class ClientMembership:
    def __init__(
        self,
        down: Downstream,
        *,
        on_late_joiner: Callable[[str], Awaitable[None]],
        on_ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.down = down
        self._late_joiner = on_late_joiner  # enable it (the node knows what ENABLE carries)
        self._on_ready = on_ready  # start the session
        self._train_body: Callable[[str], TrainBody] | None = None  # of the round in progress
        # REGISTERED answers not sent yet, and the task sending them (see ``_answer``).
        self._answers: list[str] = []
        self._answering: asyncio.Task[None] | None = None

    async def on_message(self, msg: Message) -> bool:
        down, settings = self.down, self.down.collect_settings()
        if msg.kind is Kind.REGISTER:
            await self._on_register(msg)
        elif msg.kind is Kind.UPDATE:
            await down.collector.on_update(msg, settings)
        elif msg.kind is Kind.PARTIAL:
            await down.collector.on_hosted_partial(msg, settings)
        elif msg.kind is Kind.EVALUATION:
            down.on_evaluation(msg, self)
        elif host_beat(msg):
            await self._on_host_beat(msg)
        else:
            return False
        return True

    async def _on_host_beat(self, msg: Message) -> None:
        """A host's one beat for all its clients: a sign of life of each client whose own REGISTER
        named it, and of no other. A host we know no client of (we restarted) is asked, with a
        REGISTERED to the host itself, to register its clients again, each signed by its own key."""
        down = self.down
        clients = down.hosts.clients_of(msg.sender)
        if not clients:
            log.info("%s beats for clients we do not know; asking it to register them again", msg.sender)
            await down.send(msg.sender, down.message(Kind.REGISTERED, body=self._registered_body()))
            return
        for c in clients:
            down.seen(c)

    def _registered_body(self) -> dict[str, object]:
        # The interval tells a networked client how often to beat, and how long a silence from us
        # means that we are gone; the timeout, how long a silence from it means it is gone for us.
        config = self.down.config
        return RegisteredBody.model_construct(
            heartbeat_interval_s=config.heartbeat_interval_s, heartbeat_timeout_s=config.heartbeat_timeout_s
        ).to_body()

    def ready(self) -> bool:
        return self.down.registry.online_count() >= self.down.config.min_clients

    def not_ready_reason(self) -> str:
        config = self.down.config
        return (
            f"only {self.down.registry.online_count()} of the {config.min_clients} required clients registered "
            f"within {config.registration_timeout_s:.0f} s"
        )

    async def _on_register(self, msg: Message) -> None:
        down = self.down
        body = parse_body(RegisterBody, msg)
        down.hosts.note_registration(msg.sender, body)
        previous = down.registry.register(msg.sender, body.num_examples or 0, body.label_counts)
        if previous is not PeerStatus.ONLINE:
            down.bus.emit(ev.ClientStatusChanged(msg.sender, PeerStatus.ONLINE, previous))
        self._answer(msg.sender)
        if down.started:
            await self.answered()  # REGISTERED before ENABLE
            await self._late_joiner(msg.sender)  # takes part from the next round
            r = down.collector.current
            if r and not r.closing and msg.sender in r.chosen and not r.answered_by(msg.sender) and self._train_body:
                await self.send_train([msg.sender], r, self._train_body)
        elif self.ready():
            await self.answered()
            await self._on_ready()

    def _answer(self, client: str) -> None:
        """REGISTERED to ``client``, sent in the background with the others that come meanwhile.
        Why: awaited here, each answer held the coordinator's receiving until the broker confirmed
        it (a persistent message: a disk write), so 10,000 registrations took 10,000 round trips
        one after another; sent together, their confirms overlap."""
        self._answers.append(client)
        if self._answering is None or self._answering.done():
            self._answering = asyncio.create_task(self._send_answers(), name="coordinator-registered")

    async def _send_answers(self) -> None:
        down, body = self.down, self._registered_body()
        while self._answers:
            batch, self._answers = self._answers, []
            await down.send_all(batch, lambda _c: down.message(Kind.REGISTERED, body=body))

    async def answered(self) -> None:
        """Wait until every REGISTERED answer so far is sent (before ENABLE goes to anyone)."""
        while self._answering is not None and not self._answering.done():
            await asyncio.shield(self._answering)

    async def send_train(self, selected: list[str], r: RoundState, body: Callable[[str], TrainBody]) -> list[str]:
        """TRAIN to each client, or one TRAIN per host for its hosted clients."""
        down = self.down
        self._train_body = body
        direct, hosted = down.hosts.split(selected)
        failed = await down.send_all(direct, lambda c: self._train(c, r, body(c))) if direct else []
        for host, members in hosted.items():
            # One fit config for all, and each client's own seed: what ``body`` would give each.
            seeds = seed_rows((c, down.config.client_seed(r.round, r.index[c])) for c in members)
            train = self._train(host, r, body(members[0]).model_copy(update={"clients": seeds}))
            if not await down.send(host, train):
                failed += members
        return failed

    async def send_evaluate(self, selected: list[str], e: EvalRound, body: EvaluateBody) -> list[str]:
        """EVALUATE to each client, or one per host naming its selected clients."""
        down = self.down
        direct, hosted = down.hosts.split(selected)
        failed = await down.send_all(direct, lambda c: self._evaluate(e, body)) if direct else []
        for host, members in hosted.items():
            if not await down.send(host, self._evaluate(e, body.model_copy(update={"clients": members}))):
                failed += members
        return failed

    def _evaluate(self, e: EvalRound, body: EvaluateBody) -> Message:
        down = self.down
        return make(
            Kind.EVALUATE,
            down.sender_id,
            session_id=down.session_id,
            round=e.round,
            body=body.to_body(),
            payload=down.params,
        )

    def vouches(self, sender: str, client: str) -> bool:
        return client == sender or self.down.hosts.host_of(client) == sender

    def _train(self, to: str, r: RoundState, body: TrainBody) -> Message:
        down = self.down
        return make(
            Kind.TRAIN,
            down.sender_id,
            session_id=down.session_id,
            round=r.round,
            body=body.model_copy(update={"attempt": r.attempt}).to_body(),
            payload=down.params,
        )
