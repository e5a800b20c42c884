"""PyTorch trainer: any model of the zoo, trained by minibatch SGD on one client's data.

Parameters cross the boundary as numpy float32 arrays named as in the module's ``state_dict``
(same order). Loading copies each array straight into the live tensor's memory; exporting copies
each tensor once, so the returned ``Params`` never alias the module that keeps training.

Not thread-safe: one trainer holds one module, and the runtime calls it one fit/evaluate at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedhive.app.learner import EpochProgress, EvalResult, FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params, ParamSpec, TensorSpec, check_against_spec
from fedhive.learning.models import ModelSpec, build_model
from fedhive.learning.trainer_checks import check_fit_config, check_training_data

_EVAL_BATCH = 1024  # rows per forward pass in evaluate: bounds activation memory on large sets


class TorchTrainer:
    def __init__(self, spec: ModelSpec, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
        # One thread per trainer: the platform runs clients in parallel processes, and torch's
        # default of one thread per core in each of them oversubscribes the machine many times.
        torch.set_num_threads(1)
        features, labels = check_training_data(x, y, num_classes)
        self._spec = spec
        self._num_classes = num_classes
        self._x = _as_tensor(features)
        self._y = _as_tensor(labels)
        self._model = build_model(spec, features.shape[1], num_classes)
        # Detached views sharing storage with the module: SGD updates them in place, so they stay
        # valid for the module's lifetime and loading/exporting skips building a state_dict.
        self._state = self._model.state_dict()
        self.param_spec = ParamSpec(
            tuple(TensorSpec(name, tuple(t.shape), "float32") for name, t in self._state.items())
        )

    def initial_params(self, seed: int) -> Params:
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing anyone's RNG
            _seed_cpu(seed)
            model = build_model(self._spec, self._x.shape[1], self._num_classes)
        return Params({name: t.detach().numpy().copy() for name, t in model.state_dict().items()})

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        check_fit_config(config)
        self._load(params)
        with torch.random.fork_rng(devices=[]):
            _seed_cpu(config.seed)  # anything random inside a model (dropout) is seeded
            metrics, steps = self._train(config, progress)
        if steps == 0:  # max_steps=0: no training, report how the received model does here
            evaluated = self.evaluate(params)
            metrics = dict(evaluated.metrics)
        metrics["steps"] = float(steps)
        # evaluate() above reloads the same params, so the export is right in both cases.
        return FitResult(self._export(), len(self._y), metrics)

    def evaluate(self, params: Params) -> EvalResult:
        self._load(params)
        self._model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(self._y), _EVAL_BATCH):
                xb, yb = self._x[start : start + _EVAL_BATCH], self._y[start : start + _EVAL_BATCH]
                logits = self._model(xb)
                loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum")
                correct += int((logits.argmax(dim=1) == yb).sum())
        n = len(self._y)
        return EvalResult(n, {"loss": float(loss_sum) / n, "accuracy": correct / n})

    def _train(self, config: FitConfig, progress: ProgressFn | None) -> tuple[dict[str, float], int]:
        model = self._model
        model.train()
        weights = list(model.parameters())
        # FedProx anchors to the received (global) model; a copy, since SGD moves the live one.
        anchors = [w.detach().clone() for w in weights] if config.proximal_mu > 0 else []
        # Plain heavy-ball SGD written out (same update rule as torch.optim.SGD): constructing the
        # first torch.optim optimizer in a process imports torch's compiler stack, 3-5 s per
        # client process on this machine, for four lines of arithmetic.
        velocities = [torch.zeros_like(w) for w in weights] if config.momentum else []
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(config.seed)
        n = len(self._y)
        batch = min(config.batch_size, n)
        steps_left = config.max_steps if config.max_steps is not None else -1
        steps = 0
        metrics: dict[str, float] = {}
        for epoch in range(1, config.epochs + 1):
            if steps_left == 0:
                break
            order = torch.randperm(n, generator=generator)
            # Sums stay tensors: one .item() per epoch instead of two per step.
            loss_sum = torch.zeros((), dtype=torch.float64)
            correct = torch.zeros((), dtype=torch.int64)
            seen = 0
            for start in range(0, n, batch):
                if steps_left == 0:
                    break
                rows = order[start : start + batch]
                xb, yb = self._x[rows], self._y[rows]
                for w in weights:
                    w.grad = None
                logits = model(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
                if anchors:
                    with torch.no_grad():  # gradient of mu/2 * ||w - w_global||^2
                        for w, anchor in zip(weights, anchors, strict=True):
                            if w.grad is not None:
                                w.grad.add_(w - anchor, alpha=config.proximal_mu)
                _sgd_step(weights, velocities, config.lr, config.momentum)
                with torch.no_grad():
                    loss_sum += loss.detach() * len(rows)
                    correct += (logits.argmax(dim=1) == yb).sum()
                seen += len(rows)
                steps += 1
                steps_left -= 1
            metrics = {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen}
            if progress is not None:
                progress(EpochProgress(epoch, config.epochs, metrics["loss"], metrics["accuracy"]))
        return metrics, steps

    def _load(self, params: Params) -> None:
        check_against_spec(params, self.param_spec, what="params", finite=False)
        with torch.no_grad():
            for name, tensor in self._state.items():
                # np.copyto writes into the tensor's own memory: one copy, and unlike
                # torch.from_numpy it accepts the read-only arrays a decoded payload often is.
                np.copyto(tensor.numpy(), params[name], casting="no")

    def _export(self) -> Params:
        return Params({name: t.detach().numpy().copy() for name, t in self._state.items()})


def _sgd_step(weights: Sequence[torch.Tensor], velocities: Sequence[torch.Tensor], lr: float, momentum: float) -> None:
    """w -= lr * v with v = momentum * v + grad (torch.optim.SGD's rule, dampening 0)."""
    with torch.no_grad():
        for i, w in enumerate(weights):
            if w.grad is None:
                continue
            if velocities:
                velocities[i].mul_(momentum).add_(w.grad)
                w.add_(velocities[i], alpha=-lr)
            else:
                w.add_(w.grad, alpha=-lr)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # Shares memory with a writable array; copies a read-only one (torch cannot hold those).
    return torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)


def _seed_cpu(seed: int) -> None:
    """``torch.manual_seed`` for the CPU generator only, the one this trainer's CPU model draws
    from: the same stream, but ``torch.manual_seed`` also seeds every accelerator backend, whose
    lazy checks cost about 0.3 ms per call on a machine without one (a tenth of a small model's
    round in simulation, once per client)."""
    torch.default_generator.manual_seed(seed)
