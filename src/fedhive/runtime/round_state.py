"""The coordinator's bookkeeping of the round in progress, and how a failed round is explained."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fedhive.core.envelope import Deferred
from fedhive.strategies.base import Aggregator


@dataclass
class RoundState:
    """One attempt at one round, while the coordinator collects its updates."""

    round: int
    attempt: int
    selected: list[str]
    started: float
    aggregator: Aggregator
    index: dict[str, int] = field(default_factory=dict)  # client -> position, for its training seed
    accepted: set[str] = field(default_factory=set)
    # participant -> (examples, metrics) of its accepted update: what a combiner reports upstream
    reports: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    closing: bool = False
    # Claim-checked payloads received for this round: given back to the store once the round's
    # aggregate no longer needs them (raw updates of a median stay in the aggregator until then).
    claims: list[Deferred] = field(default_factory=list)
    # Membership is asked once per message: a set, not a scan of 1000 selected ids each time.
    chosen: frozenset[str] = field(init=False)
    done: asyncio.Event = field(init=False)  # every selected participant has answered or failed

    def __post_init__(self) -> None:
        self.chosen = frozenset(self.selected)
        self.done = asyncio.Event()

    def answered(self) -> int:
        return len(self.accepted) + len(self.failed)

    def answered_by(self, participant: str) -> bool:
        return participant in self.accepted or participant in self.failed

    def check_done(self) -> None:
        if self.answered() >= len(self.selected):
            self.done.set()

    def missing(self) -> list[str]:
        return [c for c in self.selected if not self.answered_by(c)]


def shortfall_reason(r: RoundState, need: int, missing: list[str], timeout: float) -> str:
    parts = [
        f"round {r.round}: {len(r.accepted)} of {len(r.selected)} selected clients sent a valid update, "
        f"quorum is {need}"
    ]
    if missing:
        parts.append(f"no answer within {timeout:.0f} s from {', '.join(missing[:10])}")
    for c, why in list(r.failed.items())[:10]:
        parts.append(f"{c} {why}")
    return "; ".join(parts)
