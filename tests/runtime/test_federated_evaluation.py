"""Federated evaluation: clients judge each round's global model on their own data; the round's
figures are the weighted mean of theirs, a client that cannot evaluate costs only its own figures,
and combiners pass their clients' figures up exactly."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

import fedhive
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.hierarchy_simulation import run_hierarchy
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.tracking.run_directory import RunDirectory
from linear_app import app, loaded


class Seen:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def attach(self, bus: EventBus) -> None:
        for kind in (ev.ClientEvaluated, ev.EvaluationCompleted, ev.RoundCompleted):
            bus.on(kind, self.events.append)

    def of(self, kind: type, rnd: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (rnd is None or e.round == rnd)]


def by_hand(evaluated: list[ev.ClientEvaluated], metric: str) -> float:
    total = sum(e.num_examples for e in evaluated)
    return math.fsum(e.num_examples * e.metrics[metric] for e in evaluated) / total


def plan(client_app: fedhive.ClientApp, clients: int, **settings: Any) -> Any:
    config = make_config(rounds=3, min_clients=clients, lr=0.2, epochs=2, seed=3, **settings)
    return plan_simulation(config, loaded(client_app), clients, evaluate="clients")


@pytest.mark.parametrize("hosted", [True, False])
async def test_the_round_figures_are_the_weighted_mean_of_the_clients(hosted: bool) -> None:
    p, seen = plan(app, 5), Seen()
    result = await run_federation(
        p.config, p.trainers, p.num_examples, p.initial_params, observers=[seen.attach], hosted=hosted
    )
    for rnd in (1, 2, 3):
        evaluated = seen.of(ev.ClientEvaluated, rnd)
        assert sorted(e.client_id for e in evaluated) == [f"client-{i}" for i in range(5)]
        assert result.history[rnd - 1]["mse"] == by_hand(evaluated, "mse")
    assert result.history[-1]["mse"] < result.history[0]["mse"]


async def test_a_client_that_cannot_evaluate_costs_only_its_figures() -> None:
    shaky = fedhive.ClientApp(init=app.hook("init"), train=app.hook("train"))

    @shaky.evaluate
    def evaluate(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.EvalResult:
        if ctx.node["partition_id"] == 2:
            raise RuntimeError("the site's disk is gone")
        return app.hook("evaluate")(weights, config, ctx)  # type: ignore[misc]

    p, seen = plan(shaky, 4), Seen()
    result = await run_federation(p.config, p.trainers, p.num_examples, p.initial_params, observers=[seen.attach])
    assert result.rounds == 3
    for rnd in (1, 2, 3):
        (done,) = seen.of(ev.EvaluationCompleted, rnd)
        assert done.clients == 3 and list(done.failed) == ["client-2"]
        assert "the site's disk is gone" in done.failed["client-2"]
        assert result.history[rnd - 1]["mse"] == by_hand(seen.of(ev.ClientEvaluated, rnd), "mse")


async def test_a_fraction_of_clients_evaluates_every_other_round() -> None:
    p, seen = plan(app, 6, fraction_evaluate=0.5, evaluate_every=2), Seen()
    await run_federation(p.config, p.trainers, p.num_examples, p.initial_params, observers=[seen.attach])
    # Rounds 2 and 3 (the last round always), three clients each.
    assert [(e.round, e.clients) for e in seen.of(ev.EvaluationCompleted)] == [(2, 3), (3, 3)]


async def test_combiners_pass_their_clients_figures_up_exactly() -> None:
    p, seen = plan(app, 6), Seen()
    result = await run_hierarchy(
        p.config, p.trainers, [10] * 6, p.initial_params, combiners=2, observers=[seen.attach], heartbeat_s=0.5
    )
    for rnd in (1, 2, 3):
        evaluated = seen.of(ev.ClientEvaluated, rnd)
        assert sorted(e.client_id for e in evaluated) == [f"client-{i}" for i in range(6)]  # clients, not combiners
        assert result.history[rnd - 1]["mse"] == by_hand(evaluated, "mse")


async def test_clients_csv_names_the_clients_behind_the_combiners(tmp_path: Path) -> None:
    p = plan(app, 4)
    run_dir = RunDirectory(tmp_path, {})
    await run_hierarchy(
        p.config, p.trainers, [10] * 4, p.initial_params, combiners=2, observers=[run_dir.attach], heartbeat_s=0.5
    )
    with (tmp_path / "clients.csv").open() as f:
        rows = list(csv.DictReader(f))
    via = {(r["round"], r["client"]) for r in rows if r["status"].startswith("accepted via combiner-")}
    assert via == {(str(rnd), f"client-{i}") for rnd in (1, 2, 3) for i in range(4)}
    assert all(r["mse"] for r in rows if r["status"].startswith("accepted via"))


@fedhive.metric_rule("median-for-test")
def _median(reported: Any) -> float:
    values = sorted(v for _, v in reported)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


async def test_a_metric_rule_registered_by_name_aggregates_its_metric() -> None:
    p, seen = plan(app, 5, metric_rules={"mse": "median-for-test"}), Seen()
    result = await run_federation(p.config, p.trainers, p.num_examples, p.initial_params, observers=[seen.attach])
    for rnd in (1, 2, 3):
        values = sorted(e.metrics["mse"] for e in seen.of(ev.ClientEvaluated, rnd))
        assert result.history[rnd - 1]["mse"] == values[2]


def test_an_unknown_metric_rule_is_refused_in_one_line() -> None:
    with pytest.raises(fedhive.ConfigError, match="'mse' names rule 'nope', which is not one of mean, sum"):
        plan(app, 2, metric_rules={"mse": "nope"})
