"""The best round's model is kept beside the final one, and ``patience`` stops a session at the
right round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fedhive
from fedhive.core import codec
from fedhive.runtime import events as ev
from fedhive.runtime.best_round import BestRound
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.tracking.run_directory import RunDirectory
from linear_app import app, loaded


def scripted(accuracies: list[float]) -> fedhive.ClientApp:
    """``app`` whose central evaluation reports the given accuracy after each round."""
    left = list(accuracies)
    scored = fedhive.ClientApp(init=app.hook("init"), train=app.hook("train"))

    @scored.central_evaluate
    def central(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.EvalResult:
        return fedhive.EvalResult(1, {"accuracy": left.pop(0), "loss": 1.0})

    return scored


async def run(client_app: fedhive.ClientApp, out: Path, **settings: Any) -> tuple[Any, dict[int, bytes]]:
    config = make_config(min_clients=3, lr=0.1, seed=1, **settings)
    plan = plan_simulation(config, loaded(client_app), 3)
    models: dict[int, bytes] = {}

    def keep(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, lambda e: models.__setitem__(e.round, codec.encode(e.params)))

    result = await run_federation(
        plan.config,
        plan.trainers,
        plan.num_examples,
        plan.initial_params,
        evaluator=plan.evaluator,
        observers=[keep, RunDirectory(out, {}).attach],
    )
    return result, models


async def test_the_best_model_is_the_best_rounds_bits(tmp_path: Path) -> None:
    result, models = await run(scripted([0.5, 0.8, 0.6, 0.7, 0.75]), tmp_path, rounds=5)
    assert (result.rounds, result.best_round, result.key_metric, result.stopped_early) == (5, 2, "accuracy", False)
    best = codec.decode((tmp_path / "best.safetensors").read_bytes(), max_bytes=1 << 20)
    assert codec.encode(best) == models[2] != models[5]
    _, meta = codec.read_header((tmp_path / "best.safetensors").read_bytes(), max_bytes=1 << 20)
    assert meta is not None and meta["round"] == "2" and meta["metric"] == "accuracy"


async def test_patience_stops_at_the_right_round(tmp_path: Path) -> None:
    result, models = await run(scripted([0.5, 0.8, 0.6, 0.7, 0.75, 0.9, 0.95]), tmp_path, rounds=7, patience=3)
    # Best in round 2; rounds 3, 4 and 5 bring nothing better: the session ends after round 5.
    assert (result.rounds, result.best_round, result.stopped_early) == (5, 2, True)
    assert sorted(models) == [1, 2, 3, 4, 5]


async def test_a_key_metric_to_minimise(tmp_path: Path) -> None:
    result, _ = await run(app, tmp_path, rounds=4, key_metric="mse")
    assert result.key_metric == "mse" and 1 <= result.best_round <= 4
    assert result.history[result.best_round - 1]["mse"] == min(h["mse"] for h in result.history)


@pytest.mark.parametrize(
    ("metric", "values", "best"),
    [("r2", [0.1, 0.5, 0.3], 2), ("val_loss", [0.9, 0.4, 0.6], 2), ("accuracy", [0.9, 0.9, 0.8], 1)],
)
def test_the_mode_follows_the_metric_name(metric: str, values: list[float], best: int) -> None:
    tracker = BestRound(key_metric=metric)
    tracker.replay([{metric: v} for v in values])
    assert tracker.round == best
