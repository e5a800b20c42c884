"""What a combiner sends its coordinator: a ``partial`` message, in one of two forms.

- ``sum``: the mergeable aggregate of its clients (``strategies.base.Partial``): weighted sums of
  the parameters and the metrics, with their weights. Sums (not means) travel so that merging is a
  plain addition. On the wire the sums are in the model's own dtype by default (``exact=False``):
  a float32 model's partial is then as large as one update, so a combiner of k clients cuts what
  the coordinator receives k-fold, at the price of one float32 rounding per sum (relative error
  about 1e-7, well inside the 1e-6 the nested-equals-flat contract allows). ``exact=True`` keeps
  float64 (twice the bytes): nested FedAvg then equals flat FedAvg up to float64 rounding.
- ``raw``: for a strategy that cannot merge (a median needs every value), the clients' updates
  themselves, packed into one safetensors payload as ``"<i>/<tensor>"`` with each client's id,
  example count and metrics in the body. One message per round per combiner either way.

Both are checked on arrival like any update: names, shapes, dtypes (float64 for sums), size and
finiteness, before they reach an aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec, TensorSpec
from fedhive.errors import ProtocolError
from fedhive.runtime.payloads import body_int, body_metrics, payload_params
from fedhive.strategies.base import AggregateResult, Aggregator, Partial, Strategy, Update

MAX_EXAMPLES = 10**9
MAX_RAW_UPDATES = 10_000


def partial_message(
    sender: str,
    session_id: str,
    round: int,
    attempt: int,
    partial: Partial,
    clients: Sequence[str],
    *,
    spec: ParamSpec,
    exact: bool = False,
) -> Message:
    sums = partial.weighted_sum
    if not exact:
        sums = Params({t.name: sums[t.name].astype(t.dtype) for t in spec.tensors})
    body = {
        "mode": "sum",
        "exact": exact,
        "attempt": attempt,
        "total_weight": partial.total_weight,
        "num_examples": partial.num_examples,
        "count": partial.count,
        "metric_sums": dict(partial.metric_sums),
        "metric_weight": partial.metric_weight,
        "clients": list(clients),
    }
    return make(Kind.PARTIAL, sender, session_id=session_id, round=round, body=body, payload=sums)


def raw_message(sender: str, session_id: str, round: int, attempt: int, updates: Sequence[Update]) -> Message:
    packed = {f"{i}/{name}": arr for i, u in enumerate(updates) for name, arr in u.params.items()}
    meta = [{"client": u.client_id, "num_examples": u.num_examples, "metrics": dict(u.metrics)} for u in updates]
    body = {"mode": "raw", "attempt": attempt, "updates": meta, "clients": [u.client_id for u in updates]}
    return make(Kind.PARTIAL, sender, session_id=session_id, round=round, body=body, payload=Params(packed))


def read_partial(msg: Message, spec: ParamSpec, *, max_bytes: int) -> Partial | list[Update]:
    """The partial aggregate or raw updates a ``partial`` message carries, validated."""
    body = msg.envelope.body
    what = f"partial from {msg.sender}"
    if body.get("mode") == "sum":
        exact = body.get("exact") is True
        sent = payload_params(msg, _float64(spec) if exact else spec, max_bytes=max_bytes, what=what)
        sums = sent if exact else Params({n: a.astype(np.float64) for n, a in sent.items()})
        weight = _finite(body.get("total_weight"), "total_weight")
        metric_weight = _finite(body.get("metric_weight"), "metric_weight")
        if weight <= 0 or metric_weight < 0:
            raise ProtocolError(f"{what}: weights must be positive")
        return Partial(
            weighted_sum=sums,
            total_weight=weight,
            num_examples=body_int(body, "num_examples", low=1, high=MAX_EXAMPLES),
            count=body_int(body, "count", low=1, high=MAX_RAW_UPDATES),
            metric_sums=body_metrics(body, "metric_sums"),
            metric_weight=metric_weight,
        )
    if body.get("mode") == "raw":
        meta = body.get("updates")
        if not isinstance(meta, list) or not 0 < len(meta) <= MAX_RAW_UPDATES:
            raise ProtocolError(f"{what}: 'updates' must list 1 to {MAX_RAW_UPDATES} updates")
        packed = payload_params(msg, _packed(spec, len(meta)), max_bytes=max_bytes, what=what)
        return [_unpack(packed, spec, i, m, what) for i, m in enumerate(meta)]
    raise ProtocolError(f"{what}: unknown mode {body.get('mode')!r}")


def partial_size(p: Partial | list[Update]) -> tuple[int, int, dict[str, float]]:
    """(client updates, examples, example-weighted metrics) that a partial stands for."""
    if isinstance(p, Partial):
        mw = p.metric_weight or 1.0
        return p.count, p.num_examples, {k: v / mw for k, v in p.metric_sums.items()}
    n = sum(u.num_examples for u in p)
    keys = {k for u in p for k in u.metrics}
    return len(p), n, {k: sum(u.num_examples * u.metrics.get(k, 0.0) for u in p) / n for k in sorted(keys)}


def _unpack(packed: Params, spec: ParamSpec, i: int, meta: object, what: str) -> Update:
    if not isinstance(meta, Mapping) or not isinstance(meta.get("client"), str):
        raise ProtocolError(f"{what}: update {i} has no client id")
    params = Params({t.name: packed[f"{i}/{t.name}"] for t in spec.tensors})
    n = body_int(meta, "num_examples", low=1, high=MAX_EXAMPLES)
    return Update(str(meta["client"])[:128], params, n, body_metrics(meta))


def _float64(spec: ParamSpec) -> ParamSpec:
    return ParamSpec(tuple(TensorSpec(t.name, t.shape, np.dtype(np.float64).name) for t in spec.tensors))


def _packed(spec: ParamSpec, n: int) -> ParamSpec:
    return ParamSpec(tuple(TensorSpec(f"{i}/{t.name}", t.shape, t.dtype) for i in range(n) for t in spec.tensors))


def _finite(v: object, key: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ProtocolError(f"body field {key!r} must be a finite number, got {v!r}")
    return float(v)


class CollectRaw(Aggregator):
    """A combiner's aggregator for a strategy that cannot merge: keeps the updates as they are,
    to be forwarded upstream in one ``raw`` partial."""

    mergeable = False

    def __init__(self) -> None:
        self.updates: list[Update] = []

    def add(self, update: Update) -> None:
        self.updates.append(update)

    @property
    def count(self) -> int:
        return len(self.updates)

    def result(self) -> AggregateResult:
        raise NotImplementedError("a combiner forwards raw updates; it never aggregates them itself")


class ForwardRaw(Strategy):
    name = "forward"

    def aggregator(self, global_params: Params) -> Aggregator:
        return CollectRaw()
