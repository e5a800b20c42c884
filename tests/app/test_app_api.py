"""The app API as a user meets it in simulation: both styles, open config and metrics, state,
and every mistake a user will make costing only that client's update, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedhive
from fedhive.core import codec
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.tracking.run_directory import RunDirectory
from linear_app import LinearClient, app, loaded


class Seen:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def attach(self, bus: EventBus) -> None:
        for kind in (ev.UpdateAccepted, ev.UpdateRejected, ev.RoundCompleted):
            bus.on(kind, self.events.append)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def simulate(
    client_app: fedhive.ClientApp, *, clients: int = 4, rounds: int = 3, out: Path | None = None, **run: Any
) -> tuple[Any, Seen]:
    config = make_config(rounds=rounds, min_clients=clients, lr=0.2, epochs=3, seed=7, run_config=run or None)
    plan = plan_simulation(config, loaded(client_app), clients, evaluate="auto")
    seen = Seen()
    observers = [seen.attach]
    if out is not None:
        observers.append(RunDirectory(out, {}).attach)
    result = await run_federation(
        plan.config,
        plan.trainers,
        plan.num_examples,
        plan.initial_params,
        evaluator=plan.evaluator,
        observers=observers,
    )
    return result, seen


async def test_decorator_and_class_styles_give_bitwise_identical_models() -> None:
    by_decorators, _ = await simulate(app)
    by_class, _ = await simulate(fedhive.ClientApp.from_object(LinearClient()))
    assert codec.encode(by_decorators.params) == codec.encode(by_class.params)
    assert by_decorators.metrics["mse"] < 0.05  # evaluated by every client on its own rows


async def test_open_metrics_reach_rounds_and_clients_csv(tmp_path: Path) -> None:
    await simulate(app, out=tmp_path)
    rounds = (tmp_path / "rounds.csv").read_text().splitlines()
    assert "mse" in rounds[0].split(",") and "train_mse" in rounds[0].split(",") and len(rounds) == 4
    assert "mse" in (tmp_path / "clients.csv").read_text().splitlines()[0].split(",")


async def test_config_holds_the_run_config_and_round_and_state_lasts_across_rounds() -> None:
    calls: list[tuple[int, Any, int]] = []
    stateful = fedhive.ClientApp(init=app.hook("init"), evaluate=app.hook("evaluate"))

    @stateful.train
    def train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
        ctx.state["rounds_seen"] = int(ctx.state.get("rounds_seen", 0)) + 1
        calls.append((int(config["round"]), config["hidden"], ctx.state["rounds_seen"]))
        return app.hook("train")(weights, config, ctx)  # type: ignore[misc]

    await simulate(stateful, clients=2, rounds=3, hidden=64)
    assert sorted(calls) == [(1, 64, 1), (1, 64, 1), (2, 64, 2), (2, 64, 2), (3, 64, 3), (3, 64, 3)]


def broken(train: Any) -> fedhive.ClientApp:
    """``app`` whose client 1 trains with ``train`` instead; the others are honest."""
    wrapped = fedhive.ClientApp(init=app.hook("init"), evaluate=app.hook("evaluate"))

    @wrapped.train
    def pick(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
        if ctx.node["partition_id"] == 1:
            return train(weights, config, ctx)
        return app.hook("train")(weights, config, ctx)  # type: ignore[misc]

    return wrapped


def raising(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    raise RuntimeError("out of memory on this site")


def in_place(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    weights["w"] *= 0  # the global model is shared by every client of the process: refused
    return fedhive.TrainResult(weights, 1)


def wrong_shape(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    return fedhive.TrainResult({"w": np.zeros(3, np.float32), "b": weights["b"]}, 10)


def nan_weights(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    return fedhive.TrainResult({"w": np.full(5, np.nan, np.float32), "b": weights["b"]}, 10)


def nan_metric(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    return fedhive.TrainResult(dict(weights), 10, {"loss": float("nan")})


def torch_like(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    class Tensor:
        pass

    return fedhive.TrainResult({"w": Tensor(), "b": weights["b"]}, 10)


def missing_node_key(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    return ctx.node["data"]


def not_a_result(weights: Any, config: Any, ctx: fedhive.Context) -> Any:
    return weights


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        (raising, "train raised RuntimeError: out of memory on this site"),
        (in_place, "read-only"),
        (wrong_shape, "tensor 'w' has shape (3,), expected (5,)"),
        (nan_weights, "NaN or infinite"),
        (nan_metric, "metric 'loss' is nan, not a finite number"),
        (torch_like, "weights['w'] is a Tensor, not a numpy array (fedhive.torch.get_weights"),
        (missing_node_key, "ctx.node has no 'data': the site sets it with --node data=VALUE"),
        (not_a_result, "returned Params, not a fedhive.TrainResult"),
    ],
)
async def test_a_broken_client_costs_only_its_update_with_the_reason(train: Any, reason: str, tmp_path: Path) -> None:
    result, seen = await simulate(broken(train), clients=4, rounds=2, out=tmp_path)
    assert result.rounds == 2
    assert [e.num_updates for e in seen.of(ev.RoundCompleted)] == [3, 3]
    rejected = seen.of(ev.UpdateRejected)
    assert {e.client_id for e in rejected} == {"client-1"} and len(rejected) == 2
    assert all(reason in e.reason for e in rejected), rejected[0].reason
    assert reason in (tmp_path / "clients.csv").read_text()


async def test_an_app_that_changes_weights_in_place_does_not_change_what_others_train_on() -> None:
    honest, _ = await simulate(app, clients=4, rounds=2)
    with_vandal, _ = await simulate(broken(in_place), clients=4, rounds=2)
    # The vandal's update is lost; the three honest clients trained on the untouched global model.
    assert not np.array_equal(honest.params["w"], with_vandal.params["w"])
    assert np.isfinite(with_vandal.params["w"]).all() and with_vandal.metrics["mse"] < 1.0
