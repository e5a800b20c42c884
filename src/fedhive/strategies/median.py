"""Coordinate-wise robust means: FedMedian and the beta-trimmed mean (Yin et al. 2018).

Both are functions of the sorted values of each coordinate, so the result does not depend on the
order in which updates arrived (bit for bit: sums run over sorted values).
"""

from __future__ import annotations

import math

import numpy as np

from fedhive.core.params import Params
from fedhive.strategies.base import Aggregator, Strategy
from fedhive.strategies.stacked import StackingAggregator


class MedianAggregator(StackingAggregator):
    """Per coordinate, the middle value (the mean of the two middle ones for an even count)."""

    def combine(self) -> dict[str, np.ndarray]:
        n = self.stack.n
        lo, hi = (n - 1) // 2, n // 2
        out = {}
        for name in self.stack.names():
            res = np.empty(self.stack.size(name), np.float64)
            for cols, block in self.stack.column_blocks(name):
                srt = np.sort(block, axis=0)  # faster than np.partition along axis 0 (SIMD sort)
                np.add(srt[lo], srt[hi], out=res[cols], dtype=np.float64)
            res *= 0.5
            out[name] = res
        return out


class TrimmedMeanAggregator(StackingAggregator):
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values, average the rest."""

    def __init__(self, template: Params, *, beta: float) -> None:
        super().__init__(template)
        self.beta = beta

    def combine(self) -> dict[str, np.ndarray]:
        n = self.stack.n
        k = math.floor(self.beta * n)  # beta < 0.5, so 2k < n: at least one value is kept
        out = {}
        for name in self.stack.names():
            res = np.empty(self.stack.size(name), np.float64)
            for cols, block in self.stack.column_blocks(name):
                kept = np.sort(block, axis=0)[k : n - k]
                np.sum(kept, axis=0, dtype=np.float64, out=res[cols])
            res /= n - 2 * k
            out[name] = res
        return out


class FedMedian(Strategy):
    """Yin et al. 2018: the new model is the coordinate-wise median of the client models."""

    name = "fedmedian"

    @property
    def mergeable(self) -> bool:
        return False

    def aggregator(self, global_params: Params) -> Aggregator:
        return MedianAggregator(global_params)


class TrimmedMean(Strategy):
    """Coordinate-wise mean after dropping the ``beta`` fraction of extremes at each end."""

    name = "trimmed-mean"

    def __init__(self, *, beta: float = 0.1) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"trimmed mean beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    @property
    def mergeable(self) -> bool:
        return False

    def aggregator(self, global_params: Params) -> Aggregator:
        return TrimmedMeanAggregator(global_params, beta=self.beta)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "beta": self.beta}
