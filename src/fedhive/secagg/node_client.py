"""A networked client's side of secure aggregation (``fedhive client`` in a secure session).

``ClientNode`` hands this its TRAINs and its trained update when the session it was enabled for
has ``secure_aggregation`` on. The round's TRAIN (the model) makes a ``SecAggClient`` for that
round and attempt (its ``c`` and ``s`` key pairs are the session's, ``secagg.channel``). When the
TRAIN carries the roster, naming the keys this client advertised ahead with its last masked
input, it seals its shares to its neighbours at once and sends them. Otherwise it sends its
public keys, and the roster follows. Either way this happens
before training starts: keys and shares are exchanged while the client trains. The node's later
TRAINs name their step (``secagg.wire``); the update, once trained and once the neighbours' sealed
shares are in, is screened here (the node cannot screen what it cannot see), quantised, masked
and sent as the masked input, with its public keys for this client's next round; the unmasking
request is answered with the shares asked for. What goes up is never the update, only keys,
sealed shares, the masked vector and shares of secrets.

An advertisement ahead serves one round only: it is spent once a roster names it, and on any
TRAIN without a roster (the node asks for the keys again). A roster in a TRAIN when none is
outstanding (a replay, a restart), or one naming keys this client does not hold, is refused, and
so is any roster for a round and attempt whose seeds this client already derived (after its masked
input it holds keys ahead again: ``ChannelKeys.claim_round`` is what refuses a replayed round then).

A step for another round or attempt than the current one is stale (a TRAIN sent again) and
ignored; a step out of order, or one asking for both secrets of one client, is refused by
``SecAggClient`` and becomes the client's ERROR for the round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import ProtocolError
from fedhive.runtime.inline_executor import run_job
from fedhive.runtime.session_config import SessionConfig
from fedhive.secagg import wire
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.client import SecAggClient
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import AdvertiseKeys
from fedhive.secagg.pipeline import masking_threads
from fedhive.secagg.round import round_context
from fedhive.secagg.settings import fixed_point, secure_weighting
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples

log = logging.getLogger("fedhive.secagg")

Send = Callable[[Message], Awaitable[None]]


@dataclass
class _Attempt:
    round: int
    attempt: int
    client: SecAggClient
    base: Params  # the global model: the update goes as its change from it
    routed: dict[str, bytes] | None = None  # the neighbours' sealed shares, once the node sent them
    vector: np.ndarray | None = None  # the quantised update, once trained
    examples: int = 0
    masked: bool = False


class SecureClient:
    def __init__(
        self, client_id: str, session_id: str, config: SessionConfig, registered_examples: int, send: Send
    ) -> None:
        self.client_id = client_id
        self._session_id = session_id
        self._config = config
        self._registered = registered_examples
        self._send_message = send
        self._fixed = fixed_point(config.secagg_clip, config.secagg_bits)
        self._weighted = secure_weighting(parse_strategy(config.strategy))
        self._current: _Attempt | None = None
        self._channel = ChannelKeys()  # the c and s key pairs for the session: each neighbour's agreed once
        self._ahead = False  # whether our keys went ahead with our last masked input, not yet named by a roster
        self.clipped = 0  # coordinates clipped to [-secagg_clip, secagg_clip] so far (never sent)

    async def begin(self, rnd: int, attempt: int, base: Params, train: Message) -> None:
        """``opening``, sent."""
        await self._send_message(self.opening(rnd, attempt, base, train))

    def opening(self, rnd: int, attempt: int, base: Params, train: Message) -> Message:
        """The round's TRAIN, before training starts: what we answer it with. With a roster (naming
        the keys we advertised ahead), our shares, sealed at once; without, our keys. Raises
        ``SecAggError`` / ``ProtocolError`` for a roster we cannot take part in. The node sends it
        while it trains: nothing here waits on the broker."""
        roster = wire.roster_in_train(train)
        ahead, self._ahead = self._ahead, False  # whatever happens, one roster per advertisement
        context = round_context(self._session_id, rnd, attempt)
        self._current = None
        if roster is None:
            client = SecAggClient(self.client_id, context, self._channel)
            self._current = _Attempt(rnd, attempt, client, base)
            return self._message(rnd, wire.keys_body(attempt, client.advertise()))
        if not ahead:
            raise SecAggError(f"{self.client_id}: round {rnd}'s roster names keys we did not advertise ahead")
        client = SecAggClient(self.client_id, context, self._channel)
        client.advertise()  # what we advertised ahead; the roster must hold it (``share_keys`` checks)
        shares = client.share_keys(roster)
        self._current = _Attempt(rnd, attempt, client, base)
        return self._message(rnd, wire.shares_body(attempt, shares))

    async def on_step(self, msg: Message) -> None:
        """A TRAIN naming a step of the current round; raises ``SecAggError`` / ``ProtocolError``."""
        cur, name = self._current, wire.stage_of(msg)
        attempt = msg.envelope.body.get("attempt", 0)
        if cur is None or (msg.envelope.round, attempt) != (cur.round, cur.attempt):
            log.info("%s: ignored secagg %r for round %d (stale)", self.client_id, name, msg.envelope.round)
            return
        if name == "roster":
            shares = cur.client.share_keys(wire.read_roster(msg))
            await self._send(cur.round, wire.shares_body(cur.attempt, shares))
        elif name == "routed":
            cur.routed = wire.read_routed(msg)
            await self._mask(cur)
        elif name == "unmask":
            answer = cur.client.unmask(wire.read_unmask_request(msg))
            await self._send(cur.round, wire.unmask_shares_body(cur.attempt, answer))
        else:
            raise ProtocolError(f"TRAIN names an unknown secure-aggregation step {name!r}")

    async def trained(self, rnd: int, attempt: int, params: Params, num_examples: int) -> None:
        """The update of ``rnd``: screened by the client itself, then quantised and (once the
        shares are in) masked and sent; raises ``ProtocolError`` when its own screen refuses it."""
        cur = self._current
        if cur is None or (rnd, attempt) != (cur.round, cur.attempt):
            return  # superseded by a newer TRAIN
        config = self._config
        screen = UpdateScreen(cur.base, max_update_norm=config.max_update_norm, max_model_jump=config.max_model_jump)
        _distance, refused = screen.refusal(params)
        if refused is not None:
            raise ProtocolError(f"update {refused}")
        examples = capped_examples(
            num_examples, self._registered, factor=config.examples_cap_factor, ceiling=config.max_examples_per_client
        )
        weight = examples if self._weighted else 1
        cur.vector, clipped = self._fixed.encode(params, cur.base, weight, examples)
        cur.examples = examples
        self.clipped += clipped
        await self._mask(cur)

    async def _mask(self, cur: _Attempt) -> None:
        if cur.vector is None or cur.routed is None or cur.masked:
            return
        cur.masked = True
        # In the process's masking threads, not the training one: virtual clients of one process
        # mask several updates at once, and train the next meanwhile (``pipeline.masking_threads``).
        masked = await run_job(masking_threads(), cur.client.masked_input, cur.routed, cur.vector)
        cur.vector = None
        if self._current is not cur:
            return  # a newer TRAIN came while we masked
        payload = wire.masked_payload(masked.vector)
        # Our keys for the next round, advertised now so that its TRAIN can bring the roster
        # (docs/secure_aggregation.md, "Keys advertised ahead").
        self._ahead = True
        nxt = AdvertiseKeys(self.client_id, self._channel.public, self._channel.mask_public)
        await self._send(cur.round, wire.masked_body(cur.attempt, cur.examples, nxt), payload)
        log.info("%s: round %d: masked input sent", self.client_id, cur.round)

    async def _send(self, rnd: int, body: dict[str, Any], payload: Params | None = None) -> None:
        await self._send_message(self._message(rnd, body, payload))

    def _message(self, rnd: int, body: dict[str, Any], payload: Params | None = None) -> Message:
        return make(Kind.UPDATE, self.client_id, session_id=self._session_id, round=rnd, body=body, payload=payload)
