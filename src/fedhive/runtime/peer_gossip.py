"""Gossip averaging between peers (``fedhive peer --gossip K``), as the proof of concept's gossip mode.

Discovery, seeding, heartbeats and handing the model to a late peer are ``PeerNode``'s. What
differs is a round: no leader and no commit. Each peer trains on the model it holds, sends the
result directly to K partners, and averages its own model with the models sent to it (weighted
by examples, FedAvg's arithmetic), then goes on with its own average. Peers therefore hold
different models, which drift together as rounds go by; with K = peers - 1 every peer averages
every model and gossip is the synchronous mode again.

Who sends to whom is a rule every peer can compute: sender S picks its K partners from the round's
members (the peers it knows alive at the round's start) with a generator seeded by the session
seed, the round and S's id. A peer waits for the models of those who picked it and are still
alive, and at the round's deadline goes on with what came: a gone or slow partner costs nothing
but its contribution. Memberships seen by two peers may differ for a beat; the rule stays safe
(an unexpected model is still averaged in if it comes in time; an expected one is waited for at
most until the deadline).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedhive.core.bodies import PeerUpdateBody, parse_body
from fedhive.core.compression import parse_compression
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError
from fedhive.runtime import events as ev
from fedhive.runtime.peer import PeerNode
from fedhive.runtime.peer_events import Trained
from fedhive.runtime.peer_rounds import PeerRound
from fedhive.strategies.base import Update

log = logging.getLogger("fedhive.peer")


class GossipPeer(PeerNode):
    # Gossiping peers go at their own pace: one round apart is normal, not a reason to hand a
    # peer our model (it would skip a round of its own); two rounds apart is a laggard.
    handoff_lag = 2

    def __init__(self, *args: Any, gossip: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if gossip < 1:
            raise ConfigError(f"--gossip must be at least 1 partner per round, got {gossip}")
        if parse_compression(self.config.compression).lossy:
            # A compressed update is a delta from a model every peer holds; gossiping peers do not
            # hold the same model, so they send whole models.
            raise ConfigError("gossip peers send whole models: use --compression none with --gossip")
        if self.strategy.name != "fedavg":
            raise ConfigError(f"gossip averages models (fedavg); strategy {self.strategy.name!r} does not apply")
        self.fanout = gossip
        self._later: dict[int, dict[str, Message]] = {}  # models for rounds we have not started

    def partners(self, sender: str, round: int, members: list[str]) -> list[str]:
        """The peers ``sender`` sends its model of ``round`` to: K of ``members``, the same on every peer."""
        others = sorted(set(members) - {sender})
        if len(others) <= self.fanout:
            return others
        rng = np.random.default_rng([self.config.seed, round, int(sender[:16], 16)])
        return sorted(rng.choice(others, size=self.fanout, replace=False).tolist())

    # -- rounds --------------------------------------------------------------------------------------
    async def _install(self, params: Params, round: int, order: list[str]) -> None:
        # Models that came early for the round starting now are decoded by the base class.
        self._early = {round + 1: self._later.pop(round + 1)} if round + 1 in self._later else {}
        self._later = {k: v for k, v in self._later.items() if k > round + 1}
        members = sorted({*self.view.alive(), self.peer_id})  # this round's members, as we know them
        await super()._install(params, round, members)

    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        try:
            gossip = msg.kind is Kind.PEER_UPDATE and parse_body(PeerUpdateBody, msg).type == "gossip"
        except FedhiveError as exc:
            log.warning("peer %s: rejected %s from %s: %s", self.peer_id[:8], msg.kind, msg.sender[:8], exc)
            return
        if gossip:
            try:
                self._on_gossip(msg)
            except FedhiveError as exc:
                log.warning("peer %s: rejected a model from %s: %s", self.peer_id[:8], msg.sender[:8], exc)
                return
            await self._maybe_commit()
        else:
            await super()._on_message(event)

    def _on_gossip(self, msg: Message) -> None:
        rnd = msg.envelope.round
        self.view.seen(msg.sender, rnd - 1)
        r = self._round
        if r is None or rnd < r.round or (rnd == r.round and r.commit is not None):
            log.info("peer %s: dropped a late model from %s for round %d", self.peer_id[:8], msg.sender[:8], rnd)
            return
        if rnd == r.round:
            assert self.params is not None
            r.updates[msg.sender] = self.codec.decode(msg, self.params)
        else:  # a faster peer's: averaged when we get to that round
            self._later.setdefault(rnd, {})[msg.sender] = msg

    async def _on_trained(self, event: Trained) -> None:
        r = self._round
        if r is None or r.round != event.round or r.base_digest != event.base_digest or r.commit is not None:
            return
        res = event.result
        r.updates[self.peer_id] = Update(self.peer_id, res.params, res.num_examples, dict(res.metrics))
        body = PeerUpdateBody.model_construct(type="gossip", num_examples=res.num_examples, metrics=dict(res.metrics))
        model = make(Kind.PEER_UPDATE, self.peer_id, round=r.round, body=body.to_body(), payload=res.params)
        for partner in self.partners(self.peer_id, r.round, r.order):
            await self._send(partner, model)
        await self._maybe_commit()

    async def _maybe_commit(self, *, deadline: bool = False) -> None:
        """Average once our own model and those of our senders still alive are in (or, at the
        deadline, whatever came besides our own)."""
        r = self._round
        if r is None or r.commit is not None or self.peer_id not in r.updates:
            return
        if not deadline and not self._expected(r) <= r.updates.keys():
            return
        await self._apply(r, sorted(r.updates))

    def _expected(self, r: PeerRound) -> set[str]:
        """Our own model and those of the senders that picked us, are alive, and have not finished
        this round: one that finished without sending to us saw other members than we did (views
        differ for a beat around a peer's timeout), and waiting for it would last until the deadline."""
        alive, finished = set(self.view.alive()), self.view.holding(r.round)
        senders = {s for s in r.order if s != self.peer_id and s in alive and s not in finished}
        return {s for s in senders if self.peer_id in self.partners(s, r.round, r.order)} | {self.peer_id}
