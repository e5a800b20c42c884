"""Repeated rows of a wire body (a partial's members, a host's clients) and what nodes read from them.

They are ``TypedDict``s: pydantic checks them in its compiled core and they stay plain dicts, about a
microsecond per row where a model per row would cost several on the simulation's hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, NotRequired

from typing_extensions import TypedDict  # pydantic reads TypedDicts of typing_extensions on 3.11

from fedhive.core.body_fields import MAX_REASON, Examples, Metrics, NodeId, Seed, text_cut


class MemberRow(TypedDict):
    """One client's figures in a partial, an evaluation or a raw partial's ``updates``."""

    client: NodeId
    num_examples: Examples
    metrics: NotRequired[Metrics]


class FailureRow(TypedDict):
    client: NodeId
    reason: NotRequired[Annotated[str, text_cut(MAX_REASON)]]


class SeedRow(TypedDict):
    """One client of a host's TRAIN, with its own seed."""

    client: NodeId
    seed: Seed


@dataclass(frozen=True, slots=True)
class Member:
    """A client's figures as a node reads them from a ``MemberRow``."""

    client_id: str
    num_examples: int
    metrics: dict[str, float]


def member_rows(members: Iterable[Member]) -> list[MemberRow]:
    return [{"client": m.client_id, "num_examples": m.num_examples, "metrics": m.metrics} for m in members]


def failure_rows(failures: Iterable[tuple[str, str]]) -> list[FailureRow]:
    return [{"client": c, "reason": r[:MAX_REASON]} for c, r in failures]


def seed_rows(seeds: Iterable[tuple[str, int]]) -> list[SeedRow]:
    return [{"client": c, "seed": s} for c, s in seeds]


def members_of(rows: Sequence[MemberRow]) -> list[Member]:
    return [Member(r["client"], r["num_examples"], r.get("metrics", {})) for r in rows]
