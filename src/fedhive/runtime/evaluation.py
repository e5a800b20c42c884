"""Federated evaluation: the global model judged by clients on their own data.

Every ``evaluate_every`` rounds the node sends ``evaluate`` (the new global model) to a
``fraction_evaluate`` share of its participants and collects ``evaluation`` answers until all have
answered or the round's deadline; a client that dies meanwhile costs only its own figures. An
``evaluation`` (``core.bodies.EvaluationBody``) carries ``members`` (each client's examples and
metrics) and ``failures`` (each failed client's reason): one member for a client node, one per
hosted client for a ``ClientHost``, one per client behind it for a combiner, which so passes its
clients' figures up unchanged (the coordinator's aggregate is then exactly the flat one).

Each metric is aggregated by its rule (``metric_rules`` in the session): ``mean`` (weighted by
examples, the default), ``sum``, ``min``, ``max``, or a rule an app registers by name with
``fedhive.metric_rule`` (it runs where the figures are aggregated: the coordinator's own copy of
the app registers it when it is loaded).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fedhive.core.bodies import EvaluationBody, Member, failure_rows, member_rows, parse_body
from fedhive.core.envelope import Message
from fedhive.errors import ConfigError

RULES = ("mean", "sum", "min", "max")

# A rule takes each reporting client's (examples, value) and gives the round's value.
MetricRule = Callable[[Sequence[tuple[int, float]]], float]
_REGISTERED: dict[str, MetricRule] = {}
R = TypeVar("R", bound=MetricRule)


def metric_rule(name: str) -> Callable[[R], R]:
    """Register a way to aggregate a metric over the clients that reported it::

        @fedhive.metric_rule("median")
        def median(reported):              # [(num_examples, value), ...]
            return float(np.median([v for _, v in reported]))

    and name it in the session: ``metric_rules = {mse = "median"}``."""
    if not name or name in RULES:
        raise ConfigError(f"metric rule name {name!r} is empty or built in ({', '.join(RULES)})")

    def register(fn: R) -> R:
        _REGISTERED[name] = fn
        return fn

    return register


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
    body = parse_body(EvaluationBody, msg)
    return body.member_list(), body.failure_list()


def evaluation_body(members: list[Member], failures: list[tuple[str, str]]) -> dict[str, object]:
    return EvaluationBody.model_construct(members=member_rows(members), failures=failure_rows(failures)).to_body()


def aggregate_metrics(members: list[Member], rules: Mapping[str, str]) -> dict[str, float]:
    """Each metric over the members that reported it, by its rule (weighted mean by default)."""
    names = sorted({name for m in members for name in m.metrics})
    out: dict[str, float] = {}
    for name in names:
        reported = [(m.num_examples, m.metrics[name]) for m in members if name in m.metrics]
        rule = rules.get(name, "mean")
        if rule in _REGISTERED:
            value = float(_REGISTERED[rule](reported))
        elif rule == "sum":
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
    """Every rule a session names exists (built in, or registered by its app)."""
    for name, rule in rules.items():
        if rule not in RULES and rule not in _REGISTERED:
            known = ", ".join([*RULES, *sorted(_REGISTERED)])
            raise ConfigError(f"metric_rules: {name!r} names rule {rule!r}, which is not one of {known}")
