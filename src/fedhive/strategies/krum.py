"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries").

With ``n`` updates of which at most ``f`` are byzantine, each update's score is the sum of its
squared distances to its ``n - f - 2`` nearest other updates; Krum keeps the update with the
lowest score, Multi-Krum the uniform mean of the ``m`` lowest. The guarantee needs
``n >= 2f + 3``; with fewer updates the round fails with an error that says so rather than
silently averaging possibly poisoned models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import Aggregator, Strategy
from fedhive.strategies.stacked import StackedUpdates, StackingAggregator


def pairwise_sq_distances(stack: StackedUpdates) -> np.ndarray:
    """``[n, n]`` squared L2 distances between the stacked updates over all tensors, in float64.

    Computed from explicit differences, one column block at a time, rather than from the Gram
    matrix (``|a|^2 + |b|^2 - 2ab``): client models are close to each other, and that form would
    cancel catastrophically. Each pair's value is also independent of the order updates arrived
    in ((a-b)^2 == (b-a)^2, summed in the same coordinate order), so the selection is too.
    Cost: n^2/2 passes over the model, as Krum's definition implies.
    """
    n = stack.n
    dist = np.zeros((n, n), np.float64)
    for name in stack.names():
        for _, block in stack.column_blocks(name):
            x = block.astype(np.float64)
            for i in range(n - 1):
                d = x[i + 1 :] - x[i]
                np.square(d, out=d)
                dist[i, i + 1 :] += d.sum(axis=1)
    dist += dist.T
    return dist


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Sum of squared distances from each update to its ``n - f - 2`` nearest others."""
    n = dist.shape[0]
    k = n - f - 2
    others = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)  # self sorts last
    return np.asarray(others[:, :k].sum(axis=1))


def krum_select(dist: np.ndarray, f: int, m: int, client_ids: Sequence[str]) -> np.ndarray:
    """Rows of the ``m`` updates with the lowest scores, best first. Ties (two mutual nearest
    neighbours always tie when n - f - 2 = 1) go to the smaller client id, not the earlier
    arrival, so the result does not depend on arrival order."""
    return np.lexsort((np.asarray(client_ids), krum_scores(dist, f)))[:m]


class KrumAggregator(StackingAggregator):
    def __init__(self, template: Params, *, f: int, m: int | None) -> None:
        super().__init__(template)
        self.f, self.m = f, m
        self.selected: list[str] = []  # client ids the last result kept, best first

    def combine(self) -> dict[str, np.ndarray]:
        n, f = self.stack.n, self.f
        if n < 2 * f + 3:
            raise ConfigError(f"krum with f={f} needs at least 2f+3 = {2 * f + 3} updates per round, got {n}")
        m = n - f if self.m is None else self.m
        if m > n:
            raise ConfigError(f"multi-krum with m={m} needs at least {m} updates per round, got {n}")
        sel = krum_select(pairwise_sq_distances(self.stack), f, m, self.client_ids)
        self.selected = [self.client_ids[i] for i in sel]
        # Rows are summed best first: the same order whatever the arrival order.
        return {name: self.stack.rows(name)[sel].sum(axis=0, dtype=np.float64) / m for name in self.stack.names()}


class Krum(Strategy):
    """``m=1`` is Krum; ``m>1`` Multi-Krum; ``m=None`` Multi-Krum with ``m = n - f``."""

    def __init__(self, *, f: int = 1, m: int | None = 1) -> None:
        if f < 0 or (m is not None and m < 1):
            raise ValueError(f"krum needs f >= 0 and m >= 1, got f={f}, m={m}")
        self.f, self.m = f, m
        self.name = "krum" if m == 1 else "multi-krum"

    @property
    def mergeable(self) -> bool:
        return False

    def aggregator(self, global_params: Params) -> Aggregator:
        return KrumAggregator(global_params, f=self.f, m=self.m)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "f": self.f, "m": self.m}
