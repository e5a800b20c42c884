"""The trainer of an agent's peer, keeping each round's own figures for the agent's reports to the
server (``agent_sessions``): the peers' events name a round's model, not what this site's
training of it measured."""

from __future__ import annotations

from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn, Trainer
from fedhive.core.params import Params


class RecordingTrainer:
    """The session's trainer, keeping each round's own figures for the agent's reports."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._figures: dict[int, tuple[int, dict[str, float]]] = {}

    def initial_params(self, seed: int) -> Params:
        return self.trainer.initial_params(seed)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        result = self.trainer.fit(params, config, progress)
        self._figures[config.round] = (result.num_examples, dict(result.metrics))
        return result

    def evaluate(self, params: Params) -> EvalResult:
        return self.trainer.evaluate(params)

    def figures(self, round: int) -> tuple[int, dict[str, float]]:
        return self._figures.pop(round, (0, {}))
