"""Federated averaging with a streaming, mergeable aggregator.

Memory: one float64 accumulator per tensor (2 model copies for float32 models) plus the float32
result, whatever the number of clients. Each update is folded in chunk by chunk so the temporary
``w * x`` never exceeds a few hundred KiB (it stays in cache, which also makes it faster than
whole-array arithmetic).

Precision: the product ``w * x`` is formed in float64 (into that small scratch buffer), not in
the update's float32: a float32 product would round every term to 24 bits before the float64 sum
and lose what the float64 sum is for (server optimisers take small differences of the mean). With
integer example counts below 2**29 the float64 product of a float32 value is exact, so the only
rounding left is that of the float64 additions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedhive.core import residency
from fedhive.core.params import Params
from fedhive.strategies.base import AggregateResult, Aggregator, Partial, Strategy, Update

_CHUNK = 1 << 15  # elements per step: 256 KiB of float64 scratch, stays in cache
_RELEASE_EVERY = 1 << 20  # elements: pages of a memory-mapped update are given back this many at a time
_WIDEN_FIRST = 4096  # values from which a float32 tensor is widened, then multiplied (``_product_into``)
_F32 = np.dtype(np.float32)


def _axpy_into(acc: np.ndarray, x: np.ndarray, w: float, scratch: np.ndarray) -> None:
    """acc += w * x for a flat float64 ``acc``, the product in float64, without a full-size
    temporary: ``scratch`` (float64, at least ``min(acc.size, _CHUNK)`` elements) takes one chunk of
    products at a time."""
    v = x.reshape(-1)
    n = acc.size
    if n == 1 and v.dtype.kind == "f":
        # A scalar tensor (a single output's bias): in Python floats, which are float64 and round
        # the product and the sum as numpy would, at a tenth of the cost of two ufunc calls.
        acc[0] = acc.item(0) + v.item(0) * w
        return
    if n <= _CHUNK:  # most tensors of a small model: no loop to set up
        _product_into(scratch[:n], v, w)
        np.add(acc, scratch[:n], out=acc)
        return
    # A memory-mapped update (a claim check) gives its pages back as it is folded in: only the
    # accumulator stays resident, not the accumulator plus a whole update (see ``residency``).
    for outer, block in zip(range(0, n, _RELEASE_EVERY), residency.read_once(v, _RELEASE_EVERY), strict=True):
        for start in range(0, block.size, _CHUNK):
            part = block[start : start + _CHUNK]
            s = scratch[: part.size]
            _product_into(s, part, w)
            a = acc[outer + start : outer + start + part.size]
            np.add(a, s, out=a)


def _product_into(s: np.ndarray, v: np.ndarray, w: float) -> None:
    """s = w * v in float64 (the product itself in float64, not a widened float32 product).
    A float32 ``v`` of more than a few thousand values is first widened into ``s`` and then
    multiplied in place: two plain loops, 12-17 % faster than numpy's buffered casting multiply
    (a chunk of 10 Ki to 32 Ki values). The same bits: the widening is exact, and the casting
    multiply widens the same way before it multiplies."""
    if v.size >= _WIDEN_FIRST and v.dtype == _F32:
        np.copyto(s, v)
        np.multiply(s, w, out=s)
    else:
        # dtype=float64: without it numpy multiplies a float32 chunk by the Python float in
        # float32 and only widens the rounded result.
        np.multiply(v, w, out=s, dtype=np.float64)


def _divide_releasing(acc: np.ndarray, weight: float, out: np.ndarray) -> None:
    """out = acc / weight, dividing ``acc`` in place (the aggregator is consumed) and then casting
    into ``out``: a float64 division straight into a float32 ``out`` would make numpy allocate
    cast buffers while the sum and the result are both alive (the peak). A big ``acc`` is given
    back to the system (zeroed) chunk by chunk."""
    if acc.nbytes < residency.RELEASE_MIN_BYTES:
        np.divide(acc, weight, out=acc)
        out[...] = acc
        return
    a, o = acc.reshape(-1), out.reshape(-1)
    base = residency.address_of(a)
    for start in range(0, a.size, _RELEASE_EVERY):
        stop = min(start + _RELEASE_EVERY, a.size)
        np.divide(a[start:stop], weight, out=a[start:stop])
        o[start:stop] = a[start:stop]
        residency.drop_pages(base + start * a.itemsize, (stop - start) * a.itemsize)


class WeightedMeanAggregator(Aggregator):
    """sum(w_i * x_i) / sum(w_i), with w_i the client's example count (or 1 when unweighted)."""

    mergeable = True

    def __init__(self, template: Params, *, weighted: bool = True) -> None:
        self._weighted = weighted
        self._sums = Params({n: np.zeros(a.shape, np.float64) for n, a in template.items()})
        # (name, flat view of its sum), made once: ``add`` runs for every update of every round.
        self._flat = [(n, acc.reshape(-1)) for n, acc in self._sums.items()]
        self._most = min(max((acc.size for acc in self._sums.values()), default=1), _CHUNK)
        self._dtypes = {n: a.dtype for n, a in template.items()}
        self._scratch: np.ndarray | None = None  # float64 products, one chunk at a time; made on first need
        self._weight = 0.0
        self._examples = 0
        self._count = 0
        self._metric_sums: dict[str, float] = {}
        self._metric_weight = 0.0
        self._result: AggregateResult | None = None

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: Update) -> None:
        self._check_open()
        # A Python float; the products are formed in float64 (see ``_axpy_into``).
        w = float(update.num_examples) if self._weighted else 1.0
        scratch = self._scratch
        if scratch is None:  # made on first need, as big as the largest tensor (at most _CHUNK)
            scratch = self._scratch = np.empty(self._most, np.float64)
        params = update.params
        for name, acc in self._flat:
            _axpy_into(acc, params[name], w, scratch)
        self._weight += w
        self._examples += update.num_examples
        self._count += 1
        self._add_metrics(update.metrics, float(update.num_examples))

    def _add_metrics(self, metrics: Mapping[str, float], w: float) -> None:
        for k, v in metrics.items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + w * float(v)
        self._metric_weight += w

    def merge(self, partial: Partial) -> None:
        self._check_open()
        for name, acc in self._sums.items():
            acc += partial.weighted_sum[name]
        self._weight += partial.total_weight
        self._examples += partial.num_examples
        self._count += partial.count
        for k, v in partial.metric_sums.items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + v
        self._metric_weight += partial.metric_weight

    def partial(self) -> Partial:
        self._check_open()
        return Partial(
            weighted_sum=self._sums,
            total_weight=self._weight,
            num_examples=self._examples,
            count=self._count,
            metric_sums=dict(self._metric_sums),
            metric_weight=self._metric_weight,
        )

    def result(self) -> AggregateResult:
        """The weighted mean. This consumes the aggregator: a big accumulator gives its memory back
        while the result is written, so the two are never both whole (a float64 accumulator and a
        float32 result of a 100 MB model: 200 MB at the peak, not 300). Later calls return the
        same result; adding or merging afterwards is an error."""
        if self._result is not None:
            return self._result
        if self._count == 0 or self._weight <= 0:
            raise ValueError("no updates to aggregate")
        self._scratch = None  # not needed any more: the peak is the sum and the result alone
        out = {}
        for name, acc in self._sums.items():
            res = np.empty(acc.shape, self._dtypes[name])
            _divide_releasing(acc, self._weight, res)
            out[name] = res
        mw = self._metric_weight or 1.0
        metrics = {k: v / mw for k, v in self._metric_sums.items()}
        self._result = AggregateResult(Params(out), self._examples, self._count, metrics)
        return self._result

    def _check_open(self) -> None:
        if self._result is not None:
            raise RuntimeError("this aggregator has produced its result; start a new one")


class FedAvg(Strategy):
    """McMahan et al. 2017: the new model is the example-weighted mean of the client models."""

    name = "fedavg"

    def __init__(self, *, weighted: bool = True) -> None:
        self.weighted = weighted

    def aggregator(self, global_params: Params) -> Aggregator:
        return WeightedMeanAggregator(global_params, weighted=self.weighted)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "weighted": self.weighted}
