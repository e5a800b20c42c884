"""The strategy contract: aggregation and the server-side update, pure functions of their inputs.

A strategy makes one ``Aggregator`` per round. The runtime feeds it accepted updates one at a
time (``add``) or partial aggregates from combiners (``merge``) and asks for the ``result`` once
the round closes. Mergeable aggregators (weighted means) hold O(model) memory whatever the number
of clients; a non-mergeable one (a median) must see raw updates and says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhive.core.params import Params
from fedhive.strategies.sampling import ClientSampling


@dataclass(frozen=True, slots=True)
class Update:
    """One client's contribution to a round. Carries ids and numbers only, never connections."""

    client_id: str
    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Partial:
    """A mergeable aggregate: float64 weighted sums of parameters and metrics plus their weights.

    Sums (not means) travel so that merging partials is exact: nested averaging over combiners
    equals flat averaging over all their clients.
    """

    weighted_sum: Params  # float64 arrays
    total_weight: float
    num_examples: int
    count: int
    metric_sums: Mapping[str, float] = field(default_factory=dict)
    metric_weight: float = 0.0


@dataclass(frozen=True, slots=True)
class AggregateResult:
    params: Params
    num_examples: int
    count: int
    metrics: dict[str, float]


class Aggregator(ABC):
    mergeable: bool = True

    @abstractmethod
    def add(self, update: Update) -> None: ...

    def merge(self, partial: Partial) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot merge partial aggregates")

    def partial(self) -> Partial:
        raise NotImplementedError(f"{type(self).__name__} has no partial aggregate")

    @property
    @abstractmethod
    def count(self) -> int:
        """Number of client updates folded in so far (through add or merge)."""

    @abstractmethod
    def result(self) -> AggregateResult: ...


class Strategy(ABC):
    """Per-session aggregation policy. ``apply`` may keep server state (momentum, Adam moments);
    ``state``/``load_state`` let checkpoints carry it across a coordinator restart."""

    name: str = "strategy"

    @property
    def mergeable(self) -> bool:
        return True

    @abstractmethod
    def aggregator(self, global_params: Params) -> Aggregator: ...

    def apply(self, global_params: Params, aggregate: AggregateResult, round: int) -> Params:
        """The new global model. Plain averaging strategies take the aggregate as it is."""
        return aggregate.params

    def state(self) -> dict[str, np.ndarray]:
        """Server state to checkpoint after ``apply`` (copies; empty for stateless strategies)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state`` returned, so a resumed session continues bit for bit."""
        return None

    def client_config(self) -> dict[str, object]:
        """Training settings every client must use, merged into the fit config of each round
        (FedProx sends its ``proximal_mu``). Keys are fit config field names."""
        return {}

    def client_sampling(self) -> ClientSampling | None:
        """How clients must be drawn each round for the strategy's guarantees to hold, or
        ``None`` when the runtime's own selection (``fraction``) is fine. DP-FedAvg's accountant
        assumes Poisson sampling (``strategies/sampling.py``)."""
        return None

    def empty_round(self, round: int) -> None:
        """Round ``round`` drew no clients (a Poisson sample can be empty): nothing to aggregate and
        the global model stays as it is, but strategies that count rounds (DP accounting) count it."""
        return None

    def round_metrics(self) -> dict[str, float]:
        """Numbers about the strategy itself after the latest ``apply``, for the round log
        (DP-FedAvg reports the privacy spent so far as ``epsilon``)."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"name": self.name}
