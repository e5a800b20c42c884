"""Update norm clipping, as a wrapper around any strategy (spec suffix ``+clip=NORM``).

Each client's update ``delta = params - global`` is scaled down to L2 norm ``<= NORM`` (over all
float tensors together) before the wrapped aggregator sees it: one client can then move the model
at most ``NORM`` whatever it sends. Non-float tensors (counters) pass through unclipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedhive.core.params import Params
from fedhive.strategies.base import AggregateResult, Aggregator, Partial, Strategy, Update
from fedhive.strategies.sampling import ClientSampling

_CHUNK = 1 << 15


def _sq_distance(x: np.ndarray, g: np.ndarray) -> float:
    """``||x - g||^2`` in float64 without a full-size temporary."""
    a, b = x.reshape(-1), g.reshape(-1)
    total = 0.0
    for start in range(0, a.size, _CHUNK):
        d = np.subtract(a[start : start + _CHUNK], b[start : start + _CHUNK], dtype=np.float64)
        total += float(d @ d)
    return total


def delta_norm(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``params - global_params`` over the float tensors."""
    return math.sqrt(sum(_sq_distance(params[n], g) for n, g in global_params.items() if g.dtype.kind == "f"))


def clip_update(update: Update, global_params: Params, max_norm: float) -> tuple[Update, bool]:
    """``update`` with its delta scaled to norm ``<= max_norm``, and whether it was scaled.

    An update already within the bound is returned as it is (no copy). Scaled tensors are
    float64 (``global + s * delta``), so the bound holds without float32 rounding on top.
    """
    norm = delta_norm(update.params, global_params)
    if norm <= max_norm:
        return update, False
    scale = max_norm / norm
    out: dict[str, np.ndarray] = {}
    for name, g in global_params.items():
        x = update.params[name]
        if g.dtype.kind != "f":
            out[name] = x
            continue
        d = np.subtract(x, g, dtype=np.float64)
        d *= scale
        d += g
        out[name] = d
    return Update(update.client_id, Params(out), update.num_examples, update.metrics), True


class ClippingAggregator(Aggregator):
    """Clips each added update, then hands it to ``inner``; merging passes through (combiners
    clip their own clients with the same wrapper)."""

    def __init__(self, inner: Aggregator, global_params: Params, max_norm: float) -> None:
        self.inner = inner
        self.mergeable = inner.mergeable
        self._global = global_params
        self.max_norm = max_norm
        self.clipped = 0  # updates that were scaled down

    @property
    def count(self) -> int:
        return self.inner.count

    def add(self, update: Update) -> None:
        clipped, scaled = clip_update(update, self._global, self.max_norm)
        self.inner.add(clipped)
        self.clipped += scaled

    def merge(self, partial: Partial) -> None:
        self.inner.merge(partial)

    def partial(self) -> Partial:
        return self.inner.partial()

    def result(self) -> AggregateResult:
        return self.inner.result()


class Clipped(Strategy):
    """``inner`` with every client update clipped to ``max_norm`` first."""

    def __init__(self, inner: Strategy, max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"clipping norm must be positive, got {max_norm}")
        self.inner = inner
        self.max_norm = max_norm
        self.name = f"{inner.name}+clip"

    @property
    def mergeable(self) -> bool:
        return self.inner.mergeable

    def aggregator(self, global_params: Params) -> Aggregator:
        return ClippingAggregator(self.inner.aggregator(global_params), global_params, self.max_norm)

    def apply(self, global_params: Params, aggregate: AggregateResult, round: int) -> Params:
        return self.inner.apply(global_params, aggregate, round)

    def state(self) -> dict[str, np.ndarray]:
        return self.inner.state()

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state(state)

    def client_config(self) -> dict[str, object]:
        return self.inner.client_config()

    def client_sampling(self) -> ClientSampling | None:
        return self.inner.client_sampling()

    def empty_round(self, round: int) -> None:
        self.inner.empty_round(round)

    def round_metrics(self) -> dict[str, float]:
        return self.inner.round_metrics()

    def config(self) -> dict[str, object]:
        return {"name": "clip", "max_norm": self.max_norm, "inner": self.inner.config()}
