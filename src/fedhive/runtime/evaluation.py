"""Federated evaluation: the global model judged by clients on their own data.

Every ``evaluate_every`` rounds the node sends ``evaluate`` (the new global model) to a
``fraction_evaluate`` share of its participants and collects ``evaluation`` answers until all have
answered or the round's deadline; a client that dies meanwhile costs only its own figures. An
``evaluation`` carries ``members`` (``client``, ``num_examples``, ``metrics``) and ``failures``
(``client``, ``reason``): one member for a client node, one per hosted client for a ``ClientHost``,
one per client behind it for a combiner, which so passes its clients' figures up unchanged (the
coordinator's aggregate is then exactly the flat one).

Each metric is aggregated by its rule (``metric_rules`` in the session): ``mean`` (weighted by
examples, the default), ``sum``, ``min`` or ``max``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedhive.core.envelope import Message
from fedhive.errors import ProtocolError
from fedhive.runtime.hosted import Member, members_body, members_of

RULES = ("mean", "sum", "min", "max")


@dataclass
class EvalRound:
    round: int
    selected: list[str]
    pending: set[str] = field(init=False)
    results: dict[str, Member] = field(default_factory=dict)  # client -> its figures
    failed: dict[str, str] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def __post_init__(self) -> None:
        self.pending = set(self.selected)
        if not self.pending:
            self.done.set()

    def answered(self, participant: str) -> None:
        self.pending.discard(participant)
        if not self.pending:
            self.done.set()


def read_evaluation(msg: Message) -> tuple[list[Member], list[tuple[str, str]]]:
    return members_of(msg.envelope.body)


def evaluation_body(members: list[Member], failures: list[tuple[str, str]]) -> dict[str, object]:
    return members_body(members, failures)


def aggregate_metrics(members: list[Member], rules: Mapping[str, str]) -> dict[str, float]:
    """Each metric over the members that reported it, by its rule (weighted mean by default)."""
    names = sorted({name for m in members for name in m.metrics})
    out: dict[str, float] = {}
    for name in names:
        reported = [(m.num_examples, m.metrics[name]) for m in members if name in m.metrics]
        rule = rules.get(name, "mean")
        if rule == "sum":
            value = math.fsum(v for _, v in reported)
        elif rule == "min":
            value = min(v for _, v in reported)
        elif rule == "max":
            value = max(v for _, v in reported)
        else:
            total = sum(n for n, _ in reported)
            value = math.fsum(n * v for n, v in reported) / total if total else math.nan
        out[name] = value
    return out


def check_rules(rules: Mapping[str, str]) -> None:
    for name, rule in rules.items():
        if rule not in RULES:
            raise ProtocolError(f"metric rule for {name!r} must be one of {', '.join(RULES)}, got {rule!r}")
