"""The robustness experiment: digits, 10 clients, 2 of them malicious (sign-flipped updates
scaled x10). FedAvg collapses; Krum, trimmed mean and median keep their accuracy."""

from __future__ import annotations

import asyncio

import pytest

from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn, Trainer
from fedhive.cli.site_options import plan_builtin
from fedhive.core.params import Params
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation


class SignFlipped:
    """An attacker: trains honestly, then sends global - 10 * (its update - global)."""

    def __init__(self, honest: Trainer) -> None:
        self.honest = honest

    def initial_params(self, seed: int) -> Params:
        return self.honest.initial_params(seed)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        r = self.honest.fit(params, config, progress)
        evil = Params({n: (params[n] - 10.0 * (r.params[n] - params[n])).astype(params[n].dtype) for n in params})
        return FitResult(evil, r.num_examples, r.metrics)

    def evaluate(self, params: Params) -> EvalResult:
        return self.honest.evaluate(params)


def accuracy_under_attack(strategy: str) -> float:
    config = make_config(
        rounds=10,
        min_clients=10,
        model="logreg-np",
        lr=0.1,
        momentum=0.0,
        epochs=1,
        batch_size=32,
        seed=0,
        strategy=strategy,
    )
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="iid"), 10)
    trainers = list(plan.trainers)
    trainers[3], trainers[7] = SignFlipped(trainers[3]), SignFlipped(trainers[7])
    result = asyncio.run(
        run_federation(plan.config, trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator)
    )
    return result.metrics["accuracy"]


def test_fedavg_collapses_under_attack() -> None:
    assert accuracy_under_attack("fedavg") < 0.5


@pytest.mark.parametrize("strategy", ["krum:f=2", "trimmed-mean:beta=0.2", "fedmedian"])
def test_robust_strategies_hold(strategy: str) -> None:
    assert accuracy_under_attack(strategy) >= 0.85
