"""What the session page plots, shaped from stored rows: pure functions, no database.

Metrics are open: an app reports any names (``mse``, ``r2``, ...), so the charts follow the data.
A round row (``RoundRow.metrics``, written by ``service/persistence.py``) holds the global metrics
under their names, the clients' weighted training metrics under ``train``, a few numbers about the
round itself (``selected``), and a DP strategy's privacy spent (``epsilon``, ``epsilon_rdp``,
``epsilon_pld``, ``epsilon_round`` and the constant ``delta``). Each metric gets one chart titled by
its name, with the global series and the training one (``train_<name>``, as in rounds.csv);
accuracy and loss come first, then the rest sorted, then the privacy budget, which is a chart of
its own. Client rows give a box plot per metric per round: the five-number summary is computed
here, not in JavaScript, so the page stays a thin renderer and a session with many clients sends
five numbers per round, not one per client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

FIRST = ("accuracy", "loss")
PRIVACY = "epsilon"  # the privacy chart's title; its series are the keys named epsilon*
DELTA = "delta"
TRAIN = "train"
# Numbers in a round row that describe the round, not the model: the client table and the
# progress line show them, a chart would not.
BOOKKEEPING = frozenset({"selected"})


class Series(BaseModel):
    label: str  # the rounds.csv column it comes from: r2, train_r2, epsilon_pld, ...
    values: list[float | None]  # one per round of ``SessionSummary.rounds``; None: no value that round


class Chart(BaseModel):
    metric: str  # the title
    series: list[Series]
    note: str = ""  # e.g. the privacy chart's delta


class Box(BaseModel):
    round: int
    n: int
    min: float
    q1: float
    median: float
    q3: float
    max: float


class BoxChart(BaseModel):
    metric: str
    boxes: list[Box]  # one per round with at least one finite value


def number(value: Any) -> float | None:
    """A finite float, or None (a missing, non-numeric, NaN or infinite value)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def metric_order(names: Iterable[str]) -> list[str]:
    """Accuracy and loss first (when present), then the rest sorted."""
    present = set(names)
    return [m for m in FIRST if m in present] + sorted(present - set(FIRST))


def is_privacy(name: str) -> bool:
    return name in (PRIVACY, DELTA) or name.startswith(PRIVACY + "_")


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    # null counts: a diverged round stores its NaN loss as null, and the chart shows the gap
    return {k for row in rows for k, v in row.items() if v is None or number(v) is not None}


def _train(row: Mapping[str, Any]) -> Mapping[str, Any]:
    train = row.get(TRAIN)
    return train if isinstance(train, Mapping) else {}


def round_charts(rows: Sequence[Mapping[str, Any]]) -> list[Chart]:
    """The charts of rounds ``rows`` (their metrics documents, in round order)."""
    train_rows = [_train(r) for r in rows]
    global_names = _metric_names(rows) - BOOKKEEPING
    train_names = _metric_names(train_rows)

    def series(name: str) -> list[Series]:
        out = []
        values = [number(r.get(name)) for r in rows]
        if name in global_names:
            out.append(Series(label=name, values=values))
        train = [number(r.get(name)) for r in train_rows]
        # Without any evaluation the coordinator judges a round by its clients' training
        # figures: the two series are then one line, drawn once.
        if name in train_names and not (name in global_names and train == values):
            out.append(Series(label=f"{TRAIN}_{name}", values=train))
        return out

    names = global_names | train_names
    charts = [Chart(metric=n, series=series(n)) for n in metric_order(n for n in names if not is_privacy(n))]
    spent = [s for n in sorted(names) if is_privacy(n) and n != DELTA for s in series(n)]
    if spent:
        spent.sort(key=lambda s: s.label != PRIVACY)  # the reported (tighter) bound first
        deltas = sorted({d for r in rows if (d := number(r.get(DELTA))) is not None})
        note = "δ = " + ", ".join(f"{d:g}" for d in deltas) if deltas else ""
        charts.append(Chart(metric=PRIVACY, series=spent, note=note))
    return charts


def five_numbers(rnd: int, values: list[float]) -> Box | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    q = np.quantile(np.asarray(finite, dtype=np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
    return Box(round=rnd, n=len(finite), min=q[0], q1=q[1], median=q[2], q3=q[3], max=q[4])


def client_boxes(results: Iterable[tuple[int, Mapping[str, Any]]]) -> list[BoxChart]:
    """A box plot per client metric: ``results`` are (round, metrics) of every client result."""
    per_metric: dict[str, dict[int, list[float]]] = {}
    for rnd, metrics in results:
        for name, value in metrics.items():
            v = number(value)
            if v is not None:
                per_metric.setdefault(name, {}).setdefault(rnd, []).append(v)
    charts = []
    for name in metric_order(per_metric):
        boxes = [b for rnd, vs in sorted(per_metric[name].items()) if (b := five_numbers(rnd, vs))]
        charts.append(BoxChart(metric=name, boxes=boxes))
    return charts
