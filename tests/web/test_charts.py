"""The session page's data shaping (``fedhive.web.charts``): a chart per metric whatever the app
reports, in a fixed order, the privacy budget on its own chart, a box plot per client metric on a
value axis that can be read, each client's curve, and box plots per combiner."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedhive.web.charts import (
    client_boxes,
    client_curves,
    combiner_boxes,
    five_numbers,
    metric_order,
    round_charts,
    value_axis,
)


def titles_and_series(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    return [(c.metric, [s.label for s in c.series]) for c in round_charts(rows)]


def test_metric_order_puts_accuracy_and_loss_first_then_the_rest_sorted() -> None:
    assert metric_order(["r2", "loss", "mse", "accuracy", "federated_accuracy"]) == [
        "accuracy",
        "loss",
        "federated_accuracy",
        "mse",
        "r2",
    ]
    assert metric_order(["r2", "mse"]) == ["mse", "r2"]


def test_a_regression_session_gets_a_chart_per_metric_with_its_training_series() -> None:
    # As service/persistence.py stores them: the federated figures, the clients' training ones
    # under "train", and bookkeeping ("selected", "missing") that is not a metric.
    rows: list[dict[str, Any]] = [
        {"mse": 3.0, "train": {"mse": 3.5, "r2": 0.1}, "selected": 3, "missing": []},
        {"mse": 2.0, "r2": 0.4, "train": {"mse": 2.5, "r2": 0.3}, "selected": 3, "missing": ["c2"]},
        {"mse": None, "r2": 0.6, "train": {"mse": 1.5, "r2": 0.5}, "selected": 3, "missing": []},
    ]
    charts = {c.metric: c for c in round_charts(rows)}
    assert list(charts) == ["mse", "r2"]
    r2 = {s.label: s.values for s in charts["r2"].series}
    assert r2 == {"r2": [None, 0.4, 0.6], "train_r2": [0.1, 0.3, 0.5]}  # r2 appeared in round 2
    assert charts["mse"].series[0].values == [3.0, 2.0, None]  # a diverged round: a gap


def test_training_figures_equal_to_the_global_ones_are_drawn_once() -> None:
    # no evaluation at all: the coordinator judges each round by its clients' training figures
    rows = [
        {"loss": 0.9, "accuracy": 0.5, "train": {"loss": 0.9, "accuracy": 0.5, "auc": 0.7}},
        {"loss": 0.5, "accuracy": 0.8, "train": {"loss": 0.5, "accuracy": 0.8, "auc": 0.8}},
    ]
    assert titles_and_series(rows) == [("accuracy", ["accuracy"]), ("loss", ["loss"]), ("auc", ["train_auc"])]


def test_central_and_federated_evaluation_are_charts_of_their_own() -> None:
    rows = [{"accuracy": 0.9, "loss": 0.3, "federated_accuracy": 0.88, "federated_loss": 0.35, "train": {}}]
    assert [c.metric for c in round_charts(rows)] == ["accuracy", "loss", "federated_accuracy", "federated_loss"]


def test_the_privacy_budget_is_one_chart_after_the_metrics_with_delta_as_its_note() -> None:
    rows = [
        {
            "accuracy": 0.5 + r / 10,
            "epsilon": 1.0 * r,
            "epsilon_rdp": 1.2 * r,
            "epsilon_pld": 1.0 * r,
            "epsilon_round": 1.0,
            "delta": 1e-5,
            "clip": 1.5,
            "train": {"accuracy": 0.4},
        }
        for r in (1, 2)
    ]
    assert titles_and_series(rows) == [
        ("accuracy", ["accuracy", "train_accuracy"]),
        ("clip", ["clip"]),
        ("epsilon", ["epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_round"]),
    ]
    privacy = round_charts(rows)[-1]
    assert privacy.note == "δ = 1e-05"
    assert privacy.series[0].values == [1.0, 2.0]


def test_no_rounds_no_charts() -> None:
    assert round_charts([]) == []
    assert round_charts([{"train": {}, "selected": 2, "missing": []}]) == []


def test_a_box_plot_per_client_metric_per_round() -> None:
    results: list[tuple[int, dict[str, Any]]] = [
        (1, {"mse": 4.0, "r2": 0.1}),
        (1, {"mse": 2.0, "r2": 0.3}),
        (1, {"mse": 3.0, "r2": None}),  # a diverged client: left out of the box, not a zero
        (2, {"mse": 1.0, "r2": 0.5, "accuracy": 0.9}),
        (2, {}),  # a rejected update: no metrics
    ]
    boxes = {c.metric: c.boxes for c in client_boxes(results)}
    assert list(boxes) == ["accuracy", "mse", "r2"]
    assert [(b.round, b.n, b.median) for b in boxes["mse"]] == [(1, 3, 3.0), (2, 1, 1.0)]
    assert [(b.round, b.n, b.min, b.max) for b in boxes["r2"]] == [(1, 2, 0.1, 0.3), (2, 1, 0.5, 0.5)]
    assert [b.round for b in boxes["accuracy"]] == [2]


def test_five_numbers() -> None:
    box = five_numbers(3, [0.1, 0.2, 0.3, 0.4, 0.5, float("inf")])
    assert box is not None
    assert (box.round, box.n, box.min, box.q1, box.median, box.q3, box.max) == (3, 5, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert five_numbers(1, []) is None


def test_bytes_per_round_is_bookkeeping_not_a_metric_chart() -> None:
    rows: list[dict[str, Any]] = [{"loss": 1.0, "bytes_received": 4096, "selected": 2}]
    assert titles_and_series(rows) == [("loss", ["loss"])]


@pytest.mark.parametrize(
    ("lo", "hi", "labels"),
    [
        # the loss axis ("0.01 / 0.00 / 0.00"): as many decimals as the spacing needs
        (0.0012, 0.0123, ["0.000", "0.005", "0.010", "0.015"]),
        (0.3, 0.95, ["0.2", "0.4", "0.6", "0.8", "1.0"]),
        (-3.0, 7.0, ["-5.0", "-2.5", "0.0", "2.5", "5.0", "7.5"]),
        (12345.0, 98765.0, ["0", "25000", "50000", "75000", "100000"]),
        (1e-6, 5e-6, ["1e-6", "2e-6", "3e-6", "4e-6", "5e-6"]),
        (0.9, 0.9001, ["0.900000", "0.900025", "0.900050", "0.900075", "0.900100"]),
        (0.5, 0.5, ["0.450", "0.475", "0.500", "0.525", "0.550"]),  # one value throughout
    ],
)
def test_a_box_plots_value_axis_has_round_ticks_labelled_to_their_spacing(
    lo: float, hi: float, labels: list[str]
) -> None:
    axis = value_axis(lo, hi)
    assert [t.label for t in axis.ticks] == labels
    assert axis.lo <= lo and axis.hi >= hi
    assert (axis.lo, axis.hi) == (axis.ticks[0].value, axis.ticks[-1].value)


@pytest.mark.parametrize("scale", [1e-9, 1e-5, 1e-3, 0.01, 1.0, 7.0, 1e3, 1e7])
@pytest.mark.parametrize("span", [0.001, 0.07, 0.5, 3.0])
def test_axis_labels_always_differ_read_as_their_values_and_cover_the_range(scale: float, span: float) -> None:
    lo = scale
    hi = scale * (1 + span)
    axis = value_axis(lo, hi)
    values = [t.value for t in axis.ticks]
    labels = [t.label for t in axis.ticks]
    step = values[1] - values[0]
    assert len(set(labels)) == len(labels), labels
    assert all(math.isclose(float(t), v, rel_tol=0, abs_tol=step / 100) for t, v in zip(labels, values, strict=True))
    assert values == sorted(values) and values[0] <= lo and values[-1] >= hi
    assert 3 <= len(values) <= 7, labels
    assert all(len(t) <= 12 for t in labels), labels


def test_accuracy_keeps_its_whole_range_and_a_box_plot_carries_its_axis() -> None:
    (chart,) = client_boxes([(1, {"accuracy": 0.8}), (1, {"accuracy": 0.9})])
    assert chart.axis is not None
    assert [t.label for t in chart.axis.ticks] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    (loss,) = client_boxes([(1, {"loss": 0.0021}), (1, {"loss": 0.0108}), (2, {"loss": 0.0013})])
    assert loss.axis is not None
    assert [t.label for t in loss.axis.ticks] == ["0.0000", "0.0025", "0.0050", "0.0075", "0.0100", "0.0125"]


def test_each_clients_curve_across_the_rounds_for_the_first_clients() -> None:
    results: list[tuple[int, str, dict[str, Any]]] = [
        (1, "b", {"loss": 2.0}),
        (1, "a", {"loss": 3.0, "note": "text"}),
        (2, "a", {"loss": 1.0}),
        (3, "b", {"loss": None}),  # diverged: a gap in its line
        (3, "c", {"loss": 0.5}),
    ]
    curves = client_curves(results, limit=2)
    assert curves.rounds == [1, 2, 3] and (curves.shown, curves.total) == (2, 3)
    (loss,) = curves.charts
    assert {s.label: s.values for s in loss.series} == {"a": [3.0, 1.0, None], "b": [2.0, None, None]}


def test_each_combiner_gets_box_plots_of_its_own_clients() -> None:
    results: list[tuple[int, str, str, dict[str, Any]]] = [
        (1, "c1", "comb-a", {"loss": 1.0}),
        (1, "c2", "comb-a", {"loss": 3.0}),
        (1, "c3", "comb-b", {"loss": 5.0}),
        (2, "c1", "comb-a", {"loss": 0.5}),
    ]
    per = {c.combiner: c for c in combiner_boxes(results)}
    assert list(per) == ["comb-a", "comb-b"]
    assert (per["comb-a"].clients, per["comb-b"].clients) == (2, 1)
    (a_loss,) = per["comb-a"].charts
    assert [(b.round, b.n, b.median) for b in a_loss.boxes] == [(1, 2, 2.0), (2, 1, 0.5)]
