"""Small deterministic trainers for runtime tests: no data, exact arithmetic."""

from __future__ import annotations

import threading
import time

import numpy as np

from fedhive.app.learner import EpochProgress, EvalResult, FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params


class ShiftTrainer:
    """fit returns params + ``shift`` (so FedAvg results are hand-computable)."""

    def __init__(self, shift: float, num_examples: int = 10, *, size: int = 4) -> None:
        self.shift = np.float32(shift)
        self.num_examples = num_examples
        self.size = size
        self.calls = 0

    def initial_params(self, seed: int) -> Params:
        return Params({"w": np.zeros(self.size, np.float32), "b": np.zeros(1, np.float32)})

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.calls += 1
        out = Params({n: a + self.shift for n, a in params.items()})
        if progress:
            progress(EpochProgress(1, 1, loss=1.0, accuracy=0.5))
        return FitResult(out, self.num_examples, {"loss": 1.0, "accuracy": 0.5})

    def evaluate(self, params: Params) -> EvalResult:
        return EvalResult(1, {"loss": float(np.abs(params["w"]).mean()), "accuracy": 0.0})


class BadTrainer(ShiftTrainer):
    """Returns a wrong-shape or NaN update."""

    def __init__(self, mode: str) -> None:
        super().__init__(0.0)
        self.mode = mode

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        if self.mode == "shape":
            return FitResult(Params({"w": np.zeros(self.size + 1, np.float32), "b": params["b"]}), 10)
        if self.mode == "nan":
            return FitResult(Params({"w": np.full(self.size, np.nan, np.float32), "b": params["b"]}), 10)
        raise AssertionError(self.mode)


class SilentTrainer(ShiftTrainer):
    """Never returns from fit until released: a client that hangs."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.release = threading.Event()

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.release.wait(timeout=30)
        return super().fit(params, config, progress)


class SlowShift(ShiftTrainer):
    """A ShiftTrainer that takes a little time, so rounds overlap with joins and crashes."""

    def __init__(self, shift: float, n: int, delay: float = 0.02, hang_on_call: int | None = None) -> None:
        super().__init__(shift, n)
        self.delay = delay
        self.hang_on_call = hang_on_call
        self.hanging = threading.Event()
        self.release = threading.Event()

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        time.sleep(self.delay)
        if self.calls + 1 == self.hang_on_call:
            self.hanging.set()
            self.release.wait(timeout=10)
        return super().fit(params, config, progress)
