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
- ``none``: a combiner whose Poisson draw (``strategies/sampling.py``) took none of its clients:
  nothing to fold, but an answer all the same (``nobody_drawn_message``).

Both are checked on arrival like any update: names, shapes, dtypes (float64 for sums), size and
finiteness, before they reach an aggregator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhive.core.bodies import MAX_CLIENTS, Member, PartialBody, failure_rows, member_rows, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec, TensorSpec
from fedhive.errors import ProtocolError
from fedhive.runtime.payloads import payload_params
from fedhive.strategies.base import AggregateResult, Aggregator, Partial, Strategy, Update

MAX_RAW_UPDATES = MAX_CLIENTS


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
    members: Sequence[Member] | None = None,
    failures: Sequence[tuple[str, str]] | None = None,
) -> Message:
    """A ``sum`` partial; ``members`` (and ``failures``) name each client behind it with its figures."""
    sums = partial.weighted_sum
    if not exact:
        sums = Params({t.name: sums[t.name].astype(t.dtype) for t in spec.tensors})
    body = PartialBody.model_construct(
        mode="sum",
        exact=exact,
        attempt=attempt,
        total_weight=partial.total_weight,
        num_examples=partial.num_examples,
        count=partial.count,
        metric_sums=dict(partial.metric_sums),
        metric_weight=partial.metric_weight,
        clients=list(clients),
        **_named(members, failures),
    )
    return make(Kind.PARTIAL, sender, session_id=session_id, round=round, body=body.to_body(), payload=sums)


def raw_message(
    sender: str,
    session_id: str,
    round: int,
    attempt: int,
    updates: Sequence[Update],
    *,
    members: Sequence[Member] | None = None,
    failures: Sequence[tuple[str, str]] | None = None,
) -> Message:
    packed = {f"{i}/{name}": arr for i, u in enumerate(updates) for name, arr in u.params.items()}
    rows = member_rows(Member(u.client_id, u.num_examples, dict(u.metrics)) for u in updates)
    body = PartialBody.model_construct(
        mode="raw", attempt=attempt, updates=rows, clients=[u.client_id for u in updates], **_named(members, failures)
    )
    return make(Kind.PARTIAL, sender, session_id=session_id, round=round, body=body.to_body(), payload=Params(packed))


def nobody_drawn_message(sender: str, session_id: str, round: int, attempt: int) -> Message:
    """A combiner's answer when its Poisson draw for this round attempt is empty: no clients, no
    payload. The coordinator counts it as answered (a round of empty draws is an empty round)."""
    body = PartialBody.model_construct(mode="none", attempt=attempt, members=[])
    return make(Kind.PARTIAL, sender, session_id=session_id, round=round, body=body.to_body())


def _named(members: Sequence[Member] | None, failures: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if members is not None:
        out["members"] = member_rows(members)
    if failures is not None:
        out["failures"] = failure_rows(failures)
    return out


def raw_copies(msg: Message) -> int:
    """How many updates a ``raw`` partial packs (1 for sums): its size limit is that many updates'."""
    return max(1, len(parse_body(PartialBody, msg).updates))


def read_partial(msg: Message, spec: ParamSpec, *, max_bytes: int) -> Partial | list[Update]:
    """The partial aggregate or raw updates a ``partial`` message carries, validated."""
    body = parse_body(PartialBody, msg)
    what = f"partial from {msg.sender}"
    if body.mode == "sum":
        assert body.total_weight is not None and body.metric_weight is not None  # PartialBody checks "sum"
        assert body.num_examples is not None and body.count is not None
        exact = body.exact
        sent = payload_params(msg, _float64(spec) if exact else spec, max_bytes=max_bytes, what=what)
        sums = sent if exact else Params({n: a.astype(np.float64) for n, a in sent.items()})
        return Partial(
            weighted_sum=sums,
            total_weight=body.total_weight,
            num_examples=body.num_examples,
            count=body.count,
            metric_sums=body.metric_sums,
            metric_weight=body.metric_weight,
        )
    if body.mode == "raw":
        meta = body.update_list()
        packed = payload_params(msg, _packed(spec, len(meta)), max_bytes=max_bytes, what=what)
        return [_unpack(packed, spec, i, m) for i, m in enumerate(meta)]
    raise ProtocolError(f"{what}: mode {body.mode!r} carries no parameters")


def partial_size(p: Partial | list[Update]) -> tuple[int, int, dict[str, float]]:
    """(client updates, examples, example-weighted metrics) that a partial stands for."""
    if isinstance(p, Partial):
        mw = p.metric_weight or 1.0
        return p.count, p.num_examples, {k: v / mw for k, v in p.metric_sums.items()}
    n = sum(u.num_examples for u in p)
    keys = {k for u in p for k in u.metrics}
    return len(p), n, {k: sum(u.num_examples * u.metrics.get(k, 0.0) for u in p) / n for k in sorted(keys)}


def _unpack(packed: Params, spec: ParamSpec, i: int, meta: Member) -> Update:
    params = Params({t.name: packed[f"{i}/{t.name}"] for t in spec.tensors})
    return Update(meta.client_id, params, meta.num_examples, meta.metrics)


def _float64(spec: ParamSpec) -> ParamSpec:
    return ParamSpec(tuple(TensorSpec(t.name, t.shape, np.dtype(np.float64).name) for t in spec.tensors))


def _packed(spec: ParamSpec, n: int) -> ParamSpec:
    return ParamSpec(tuple(TensorSpec(f"{i}/{t.name}", t.shape, t.dtype) for i in range(n) for t in spec.tensors))


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
