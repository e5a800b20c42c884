"""What the runtime asks of a learner: fit and evaluate on ``Params``.

A trainer owns its data (a client's shard, or the coordinator's held-out test split) and its
model architecture; the runtime only ever hands it parameters and hyperparameters. ``fit`` and
``evaluate`` are CPU-bound and are called from a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fedhive.app.contract import EvalResult
from fedhive.core.params import Params

__all__ = ["EpochProgress", "EvalResult", "Evaluator", "FitConfig", "FitResult", "ProgressFn", "Trainer"]


@dataclass(frozen=True, slots=True)
class FitConfig:
    """Hyperparameters of one local training call, as sent in a ``train`` message."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9  # heavy-ball SGD on the client; reset every round (no state crosses rounds)
    seed: int = 0  # derived per (session seed, round, client) by the coordinator: reproducible runs
    proximal_mu: float = 0.0  # FedProx: weight of ||w - w_global||^2 / 2 in the local objective
    max_steps: int | None = None  # stop after this many minibatch steps (benchmarks: fixed work)
    round: int = 0  # the round this call trains for: set by the client from the TRAIN message

    def with_seed(self, seed: int) -> FitConfig:
        """This configuration for one client: ``dataclasses.replace`` does the same at twice the
        cost, which counts when a host makes one per client per round."""
        return FitConfig(
            self.epochs, self.batch_size, self.lr, self.momentum, seed, self.proximal_mu, self.max_steps, self.round
        )

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "seed": self.seed,
            "proximal_mu": self.proximal_mu,
            "max_steps": self.max_steps,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FitConfig:
        steps = data.get("max_steps")
        return cls(
            epochs=int(data.get("epochs", 1)),  # type: ignore[call-overload]
            batch_size=int(data.get("batch_size", 32)),  # type: ignore[call-overload]
            lr=float(data.get("lr", 0.05)),  # type: ignore[arg-type]
            momentum=float(data.get("momentum", 0.9)),  # type: ignore[arg-type]
            seed=int(data.get("seed", 0)),  # type: ignore[call-overload]
            proximal_mu=float(data.get("proximal_mu", 0.0)),  # type: ignore[arg-type]
            max_steps=None if steps is None else int(steps),  # type: ignore[call-overload]
        )


@dataclass(frozen=True, slots=True)
class EpochProgress:
    """Reported after each local epoch; the client turns it into a heartbeat."""

    epoch: int
    epochs: int
    loss: float | None
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class FitResult:
    params: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)  # at least "loss" and "accuracy"


ProgressFn = Callable[[EpochProgress], None]


class Trainer(Protocol):
    def initial_params(self, seed: int) -> Params:
        """Freshly initialised parameters (deterministic for a seed)."""
        ...

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        """Train from ``params`` on the local data; must not modify ``params`` in place."""
        ...

    def evaluate(self, params: Params) -> EvalResult:
        """Metrics of ``params`` on the local data (``EvalResult``: examples and open metrics)."""
        ...


class Evaluator(Protocol):
    """What evaluates the global model after a round (the coordinator's, a peer's)."""

    def evaluate(self, params: Params) -> EvalResult: ...
