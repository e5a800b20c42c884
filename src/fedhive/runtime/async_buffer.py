"""The state an asynchronous session (``async_rounds``) keeps between messages: what each client was
sent, the model versions updates may still be trained on, and the buffer of the next version."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fedhive.core.params import Params
from fedhive.runtime.round_state import RoundState
from fedhive.strategies.screening import UpdateScreen


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A TRAIN sent to a client: what its UPDATE must name back, and when it went."""

    round: int  # the round its update is for: the version it was sent, plus one
    attempt: int
    sent: float


@dataclass(frozen=True, slots=True)
class HeldVersion:
    """A model version that updates may still be trained on."""

    params: Params
    screen: UpdateScreen  # screens updates trained from this version


@dataclass
class UpdateBuffer:
    """The updates of the next version, folded as they come."""

    r: RoundState  # its aggregator; ``selected`` lists the updates' senders, in order
    moves: dict[str, float] = field(default_factory=dict)  # sender -> weight * distance moved
    folding: int = 0  # folds in a worker thread right now
    closing: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def folded(self) -> None:
        """One fold in a worker thread is over; the loop, if it waits to aggregate, may go on."""
        self.folding -= 1
        if self.closing and not self.folding:
            self.drained.set()
