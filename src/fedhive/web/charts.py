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
five numbers per round, not one per client. So is each box plot's value axis (``value_axis``):
round ticks whose labels carry as many decimals as their spacing needs, so that a loss between
0.001 and 0.012 reads "0.000 / 0.005 / 0.010 / 0.015", never "0.01 / 0.00 / 0.00".

Per-client curves (``client_curves``) draw each client's figure across the rounds, one line per
client, for the first ``MAX_CURVES`` clients; the box plots summarise them all. In a hierarchical
session the rows of clients behind a combiner name it (``via``), and each combiner gets box plots
of its own clients (``combiner_boxes``).
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
BOOKKEEPING = frozenset({"selected", "bytes_received"})
MAX_CURVES = 12  # clients drawn one line each; beyond that a chart is a tangle, the box plots tell it
AXIS_TICKS = 4  # about this many intervals on a box plot's value axis


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


class Tick(BaseModel):
    value: float
    label: str


class Axis(BaseModel):
    lo: float  # the axis's ends: the first and last tick
    hi: float
    ticks: list[Tick]


class BoxChart(BaseModel):
    metric: str
    boxes: list[Box]  # one per round with at least one finite value
    axis: Axis | None = None  # None: no value to draw


class ClientCurves(BaseModel):
    rounds: list[int]  # the x axis: the rounds any client reported in
    charts: list[Chart]  # a chart per client metric, a series per client (its id as the label)
    shown: int  # clients drawn
    total: int  # clients in the session


class CombinerBoxes(BaseModel):
    combiner: str
    clients: int
    charts: list[BoxChart]  # its clients' metrics per round


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
        axis = value_axis(min(b.min for b in boxes), max(b.max for b in boxes), share=name == "accuracy")
        charts.append(BoxChart(metric=name, boxes=boxes, axis=axis))
    return charts


def value_axis(lo: float, hi: float, *, share: bool = False) -> Axis:
    """Ticks at a round step (1, 2, 2.5 or 5 times a power of ten) covering ``lo``..``hi``, labelled
    with the decimals the step needs and no more: every label differs from its neighbours and
    reads as its value. A share (accuracy) keeps its whole 0..1 range when its values are in it,
    so rounds and sessions compare at a glance."""
    if share and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        pad = abs(hi) / 10 or 1.0  # one value throughout: a line mid-chart
        lo, hi = lo - pad, hi + pad
    step = _round_step((hi - lo) / AXIS_TICKS)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    values = [_clean(i * step, step) for i in range(first, last + 1)]
    labels = _labels(values, step)
    return Axis(
        lo=values[0], hi=values[-1], ticks=[Tick(value=v, label=t) for v, t in zip(values, labels, strict=True)]
    )


def _round_step(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * (1 - 1e-9))


def _clean(value: float, step: float) -> float:
    # i * step is 0.30000000000000004 or -1e-17: back to the decimal the tick stands for
    return 0.0 if abs(value) < step * 1e-6 else float(f"{value:.12g}")


def _labels(values: list[float], step: float) -> list[str]:
    """The shortest labels that tell the ticks apart: fixed decimals for everyday magnitudes,
    a power of ten for very large or very small ones."""
    biggest = max(abs(v) for v in values)
    exponent = biggest >= 1e6 or biggest < 1e-3
    for extra in range(0, 4):
        if exponent:
            digits = max(0, math.floor(math.log10(biggest)) - math.floor(math.log10(step))) + extra
            labels = ["0" if v == 0 else _short_exponent(f"{v:.{digits}e}") for v in values]
        else:
            labels = [f"{v:.{max(0, -math.floor(math.log10(step))) + extra}f}" for v in values]
        if len(set(labels)) == len(labels) and all(_reads_as(t, v, step) for t, v in zip(labels, values, strict=True)):
            return labels
    return labels


def _short_exponent(text: str) -> str:
    mantissa, power = text.split("e")
    return f"{mantissa}e{int(power)}"  # 2.5e+06 -> 2.5e6, 1e-06 -> 1e-6


def _reads_as(label: str, value: float, step: float) -> bool:
    return abs(float(label) - value) <= step / 100


def client_curves(results: Iterable[tuple[int, str, Mapping[str, Any]]], *, limit: int = MAX_CURVES) -> ClientCurves:
    """Each client's metrics across the rounds: ``results`` are (round, client, metrics)."""
    rows = list(results)
    clients = sorted({client for _, client, _ in rows})
    shown = clients[:limit]
    rounds = sorted({rnd for rnd, _, _ in rows})
    at = {rnd: i for i, rnd in enumerate(rounds)}
    values: dict[str, dict[str, list[float | None]]] = {}  # metric -> client -> one value per round
    for rnd, client, metrics in rows:
        if client not in shown:
            continue
        for name, value in metrics.items():
            v = number(value)
            if v is None and value is not None:
                continue  # not a number at all (a text the app reported)
            line = values.setdefault(name, {}).setdefault(client, [None] * len(rounds))
            line[at[rnd]] = v
    charts = [
        Chart(metric=name, series=[Series(label=c, values=values[name][c]) for c in shown if c in values[name]])
        for name in metric_order(values)
    ]
    return ClientCurves(rounds=rounds, charts=charts, shown=len(shown), total=len(clients))


def combiner_boxes(results: Iterable[tuple[int, str, str, Mapping[str, Any]]]) -> list[CombinerBoxes]:
    """Box plots of each combiner's clients: ``results`` are (round, client, combiner, metrics)."""
    per: dict[str, list[tuple[int, str, Mapping[str, Any]]]] = {}
    for rnd, client, combiner, metrics in results:
        per.setdefault(combiner, []).append((rnd, client, metrics))
    return [
        CombinerBoxes(
            combiner=combiner,
            clients=len({client for _, client, _ in rows}),
            charts=client_boxes((rnd, metrics) for rnd, _, metrics in rows),
        )
        for combiner, rows in sorted(per.items())
    ]
