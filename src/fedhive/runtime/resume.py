"""Where a restarted coordinator picks a session up: the state of its last completed round.

Whoever stores checkpoints (the platform's metadata and artifact stores, or the run directory of
``fedhive coordinator``) loads them into a ``Checkpoint``; the coordinator is then built from it
the same way in both places: the checkpoint's parameters as the initial model, the strategy with
its server state restored (FedAdam's moments, DP-FedAvg's privacy spent), and the next round as
the first. So a resumed session runs each remaining round exactly once and continues bit for bit.
A checkpoint also carries the senders' clock leads that replay protection across the restart
needs (``core.signing.SenderClocks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy

_STATE_MAX_BYTES = 1 << 34


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the last completed round
    params: Params  # the global model after it
    strategy_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    history: tuple[dict[str, float], ...] = ()  # global metrics per round, where the store keeps them
    # Per sender, how far its clock ran ahead of the coordinator's (core.signing.SenderClocks): a
    # restarted coordinator then refuses, in each sender's own clock, whatever was signed before it.
    sender_clocks: Mapping[str, float] = field(default_factory=dict)

    @property
    def next_round(self) -> int:
        return self.round + 1


def strategy_for(config: SessionConfig, checkpoint: Checkpoint | None) -> Strategy:
    """The session's strategy, with its server state as it was after the checkpoint's round."""
    strategy = parse_strategy(config.strategy)
    if checkpoint is not None and checkpoint.strategy_state:
        strategy.load_state(checkpoint.strategy_state)
    return strategy


def coordinator_kwargs(
    config: SessionConfig, checkpoint: Checkpoint | None, *, strategy: Strategy | None = None
) -> dict[str, Any]:
    """``Coordinator`` keyword arguments that resume from ``checkpoint`` (or start at round 1).
    ``strategy``: one the caller built with ``strategy_for`` (to hand it to an observer too)."""
    strategy = strategy or strategy_for(config, checkpoint)
    if checkpoint is None:
        return {"strategy": strategy, "start_round": 1}
    return {"strategy": strategy, "start_round": checkpoint.next_round, "history": list(checkpoint.history)}


def encode_state(state: Mapping[str, np.ndarray]) -> bytes | None:
    """A strategy's state as safetensors bytes (None for a stateless strategy)."""
    return codec.encode(Params(dict(state))) if state else None


def decode_state(data: bytes | None) -> dict[str, np.ndarray]:
    if not data:
        return {}
    return dict(codec.decode(data, max_bytes=_STATE_MAX_BYTES, what="strategy state"))
