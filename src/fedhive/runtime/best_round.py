"""Which round's global model is the best so far, by the session's key metric, and when to stop.

The final model of a session is not always its best: a global model can get worse in later rounds
(clients over-fitting their own data). The coordinator keeps the best round's model beside the
final one (``BestModel`` event: the run directory writes ``best.safetensors``) and, with
``patience``, stops once that many rounds have passed without improvement.

The key metric is the session's ``key_metric`` (``mode`` min or max); without one, ``accuracy``
(max) if the rounds report it, else ``loss`` (min). A mode left out follows the name: metrics
that grow with quality (accuracy, r2, f1, auc, precision, recall) are maximised, others minimised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_GROWS = ("acc", "r2", "f1", "auc", "precision", "recall", "iou", "dice")


def mode_of(metric: str) -> str:
    return "max" if any(part in metric.lower() for part in _GROWS) else "min"


@dataclass
class BestRound:
    key_metric: str | None = None
    mode: str | None = None
    patience: int | None = None
    round: int = 0  # 0: no round judged yet
    value: float | None = None

    def metric_for(self, metrics: Mapping[str, float]) -> str | None:
        if self.key_metric is not None:
            return self.key_metric if self.key_metric in metrics else None
        return next((m for m in ("accuracy", "loss") if m in metrics), None)

    def offer(self, round: int, metrics: Mapping[str, float]) -> bool:
        """True when ``round``'s metrics are the best so far (the first judged round always is)."""
        metric = self.metric_for(metrics)
        if metric is None:
            return False
        self.key_metric = metric
        value = float(metrics[metric])
        better = (self.mode or mode_of(metric)) == "max"
        if self.value is None or (value > self.value if better else value < self.value):
            self.round, self.value = round, value
            return True
        return False

    def replay(self, history: Sequence[Mapping[str, float]]) -> None:
        """Judge the rounds a resumed session completed before (rounds 1..len(history))."""
        for i, metrics in enumerate(history, start=1):
            self.offer(i, metrics)

    def exhausted(self, round: int) -> bool:
        """Early stopping: ``patience`` rounds since the best one."""
        return self.patience is not None and self.value is not None and round - self.round >= self.patience
