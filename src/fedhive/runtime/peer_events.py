"""What a peer (``runtime.peer``) emits and what it schedules on its own bus."""

from __future__ import annotations

from dataclasses import dataclass

from fedhive.app.learner import FitResult


@dataclass(frozen=True, slots=True)
class PeerRoundCompleted:
    """Every peer emits this after each round; equal ``digest``s across peers are the contract."""

    peer_id: str
    round: int
    digest: str
    members: list[str]
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Beat:
    """Time to announce ourselves and look at who is gone."""


@dataclass(frozen=True, slots=True)
class RoundCheck:
    round: int  # the round whose deadline (or a recheck after it) has come


@dataclass(frozen=True, slots=True)
class Trained:
    """This peer's own training of ``round`` is over."""

    round: int
    base_digest: str
    result: FitResult
