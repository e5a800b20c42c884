"""The updates of a peer's round (``runtime.peer``): others' decoded onto the round's base model, its
own encoded as the session says, and a committed set merged into the next model.

Updates travel compressed as the session says (int8, top-k...); every peer, the sender too,
aggregates the decoded form, so all still hold the same bits.
"""

from __future__ import annotations

import logging
from typing import Any

from fedhive.app.learner import Evaluator, FitResult
from fedhive.core.bodies import PeerUpdateBody, parse_body
from fedhive.core.compression import UpdateCompressor, decode_update
from fedhive.core.envelope import Message
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import FedhiveError
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.peer_rounds import aggregate_in_order, weighted_metrics
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy, Update

log = logging.getLogger("fedhive.peer")


class PeerUpdates:
    def __init__(self, config: SessionConfig, spec: ParamSpec) -> None:
        self.config = config
        self.spec = spec  # what every model and update must match
        self._compressor = UpdateCompressor(config.compression)

    def decode(self, msg: Message, base: Params) -> Update:
        """The update in ``msg``, checked (and decompressed onto ``base``, the model it was trained from)."""
        params = payload_params(
            msg,
            self.spec,
            max_bytes=self.config.max_update_bytes,
            what=f"update from {msg.sender}",
            compression=self.config.compression,
            base=base,
        )
        body = parse_body(PeerUpdateBody, msg)
        assert body.num_examples is not None  # required of an update (PeerUpdateBody)
        return Update(msg.sender, params, body.num_examples, body.metrics)

    def decode_early(self, peer_id: str, messages: dict[str, Message], base: Params) -> dict[str, Update]:
        """Updates that came before their round's base model: decoded now that it is here."""
        updates = {}
        for sender, msg in messages.items():
            try:
                updates[sender] = self.decode(msg, base)
            except FedhiveError as exc:  # as if it had been rejected on arrival
                log.warning("peer %s: rejected update from %s: %s", peer_id[:8], sender[:8], exc)
        return updates

    def encode_own(self, peer_id: str, result: FitResult, base: Params) -> tuple[Params, dict[str, Any], Update]:
        """Our own update as it goes on the wire (payload and the body's encoding fields), and as the
        others will decode it, bit for bit: the one this peer aggregates."""
        self._compressor.begin_round(base)
        payload, encoding = self._compressor.compress(result.params)
        own = result.params
        if encoding:
            own = decode_update(
                payload,
                claimed=encoding.get("compression"),
                session=self.config.compression,
                expected=self.spec,
                base=base,
                max_bytes=self.config.max_update_bytes,
                what="own update",
            )
        return payload, encoding, Update(peer_id, own, result.num_examples, dict(result.metrics))


def merge_round(
    strategy: Strategy, base: Params, updates: dict[str, Update], round: int, evaluator: Evaluator | None
) -> tuple[Params, dict[str, float]]:
    """The committed updates merged in id order onto ``base``, with the round's metrics (the held-out
    evaluation's too, where the peer has one)."""
    new = aggregate_in_order(strategy, base, updates, round)
    metrics = weighted_metrics(updates)
    if evaluator is not None:
        metrics.update(evaluator.evaluate(new).metrics)
    return new, metrics
