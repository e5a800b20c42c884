"""The session page's data shaping (``fedhive.web.charts``): a chart per metric whatever the app
reports, in a fixed order, the privacy budget on its own chart, a box plot per client metric."""

from __future__ import annotations

from typing import Any

from fedhive.web.charts import client_boxes, five_numbers, metric_order, round_charts


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
