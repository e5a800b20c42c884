"""Storage for aggregators that must see every update (median, trimmed mean, Krum).

A list of ``Params`` would keep every client's arrays alive plus Python overhead per tensor and
would need one more full copy to stack them when the round closes. Instead each tensor gets one
``[capacity, *shape]`` array; an update is copied into the next row as it arrives and the buffer
doubles when full, so the peak is at most twice the rows in use during a grow and the combine step
works on one contiguous block per tensor.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping

import numpy as np

from fedhive.core.params import Params
from fedhive.strategies.base import AggregateResult, Aggregator, Update

CHUNK = 1 << 16  # elements of scratch per column block when combining


def stack_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; other floats stack as float32; integers as float64 (exact to 2**53)."""
    if dtype == np.float64 or dtype.kind in "iub":
        return np.dtype(np.float64)
    return np.dtype(np.float32)


class StackedUpdates:
    """Client tensors stacked as rows, one array per tensor, grown geometrically."""

    def __init__(self, template: Params, *, capacity: int = 4) -> None:
        self._shapes = {n: a.shape for n, a in template.items()}
        self._dtypes = {n: stack_dtype(a.dtype) for n, a in template.items()}
        self._capacity = max(1, capacity)
        self._rows: dict[str, np.ndarray] = {}
        self.n = 0

    def append(self, params: Mapping[str, np.ndarray]) -> None:
        if not self._rows:
            self._rows = {n: np.empty((self._capacity, *s), self._dtypes[n]) for n, s in self._shapes.items()}
        elif self.n == self._capacity:
            self._capacity *= 2
            for name, old in self._rows.items():
                grown = np.empty((self._capacity, *old.shape[1:]), old.dtype)
                grown[: self.n] = old[: self.n]
                self._rows[name] = grown
        for name, buf in self._rows.items():
            buf[self.n] = params[name]
        self.n += 1

    def rows(self, name: str) -> np.ndarray:
        """The ``[n, *shape]`` block of tensor ``name`` (a view)."""
        return self._rows[name][: self.n]

    def size(self, name: str) -> int:
        """Number of scalars in tensor ``name``."""
        return int(np.prod(self._shapes[name], dtype=np.int64))

    def names(self) -> Iterator[str]:
        return iter(self._shapes)

    def column_blocks(self, name: str) -> Iterator[tuple[slice, np.ndarray]]:
        """``(columns, block)`` pairs covering tensor ``name`` flattened to ``[n, size]``, each
        block small enough that per-coordinate work on it stays in cache."""
        flat = self.rows(name).reshape(self.n, -1)
        width = max(1, CHUNK // max(1, self.n))
        for start in range(0, flat.shape[1], width):
            cols = slice(start, min(start + width, flat.shape[1]))
            yield cols, flat[:, cols]


class StackingAggregator(Aggregator):
    """Keeps every update; subclasses combine the stack per tensor when the round closes.

    Robust rules weigh every client the same whatever ``num_examples`` it reports: a byzantine
    client would otherwise claim a huge count. Client metrics are still example-weighted means,
    as in FedAvg, since they only describe the round.
    """

    mergeable = False

    def __init__(self, template: Params) -> None:
        self._dtypes = {n: a.dtype for n, a in template.items()}
        self._shapes = {n: a.shape for n, a in template.items()}
        self.stack = StackedUpdates(template)
        self.client_ids: list[str] = []  # row i of the stack is client_ids[i]'s update
        self._examples = 0
        self._metric_sums: dict[str, float] = {}
        self._metric_weight = 0.0

    @property
    def count(self) -> int:
        return self.stack.n

    def add(self, update: Update) -> None:
        self.stack.append(update.params)
        self.client_ids.append(update.client_id)
        self._examples += update.num_examples
        w = float(update.num_examples)
        for k, v in update.metrics.items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + w * float(v)
        self._metric_weight += w

    def result(self) -> AggregateResult:
        if self.stack.n == 0:
            raise ValueError("no updates to aggregate")
        combined = self.combine()
        out = {}
        for name, dtype in self._dtypes.items():
            arr = combined[name].reshape(self._shapes[name])
            if dtype.kind in "iub":
                arr = np.rint(arr)
            out[name] = arr.astype(dtype, copy=False)
        mw = self._metric_weight or 1.0
        metrics = {k: v / mw for k, v in self._metric_sums.items()}
        return AggregateResult(Params(out), self._examples, self.stack.n, metrics)

    @abstractmethod
    def combine(self) -> dict[str, np.ndarray]:
        """One float array per tensor (any shape with the tensor's size) from ``self.stack``."""
