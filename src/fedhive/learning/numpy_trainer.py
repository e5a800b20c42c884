"""Multinomial logistic regression in plain numpy: the trainer for simulations and benchmarks.

It exists so a thousand simulated clients cost little more than the framework itself: no torch
import, no per-sample Python loop, float32 throughout, one matrix product per minibatch each way.
"""

from __future__ import annotations

import numpy as np

from fedhive.app.learner import EpochProgress, EvalResult, FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params, ParamSpec, TensorSpec, check_against_spec
from fedhive.learning.trainer_checks import check_fit_config, check_training_data

_INIT_SCALE = np.float32(0.01)  # small random weights: symmetric start, yet not all-equal logits
_EVAL_BATCH = 8192  # rows per evaluation chunk: bounds the logits buffer on large test sets


class NumpyLogRegTrainer:
    """Softmax regression trained by minibatch SGD; params ``weight`` [d, c] and ``bias`` [c]."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
        self._x, self._y = check_training_data(x, y, num_classes)
        self._num_classes = num_classes
        d = self._x.shape[1]
        self.param_spec = ParamSpec(
            (TensorSpec("weight", (d, num_classes), "float32"), TensorSpec("bias", (num_classes,), "float32"))
        )

    def initial_params(self, seed: int) -> Params:
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self._x.shape[1], self._num_classes), dtype=np.float32) * _INIT_SCALE
        return Params({"weight": weight, "bias": np.zeros(self._num_classes, dtype=np.float32)})

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        check_fit_config(config)
        check_against_spec(params, self.param_spec, what="params", finite=False)
        # Copies we own: the caller's arrays (often the global model, shared) stay untouched.
        weight, bias = params["weight"].copy(), params["bias"].copy()
        global_weight = params["weight"]
        mu = np.float32(config.proximal_mu)
        lr = np.float32(config.lr)
        beta = np.float32(config.momentum)
        # Heavy-ball momentum, as torch.optim.SGD does it: v = beta * v + g; w -= lr * v.
        vel_weight, vel_bias = np.zeros_like(weight), np.zeros_like(bias)
        x, y = self._x, self._y
        n = len(y)
        batch = min(config.batch_size, n)
        rng = np.random.default_rng(config.seed)
        steps_left = config.max_steps if config.max_steps is not None else -1
        steps = 0
        metrics: dict[str, float] = {}
        for epoch in range(1, config.epochs + 1):
            if steps_left == 0:
                break
            order = rng.permutation(n)
            loss_sum = 0.0
            correct = 0
            seen = 0
            for start in range(0, n, batch):
                if steps_left == 0:
                    break
                rows = order[start : start + batch]
                xb, yb = x[rows], y[rows]
                batch_loss, batch_correct, grad_logits = _softmax_step(xb @ weight + bias, yb)
                grad_weight = xb.T @ grad_logits
                if mu:  # FedProx: gradient of mu/2 * ||w - w_global||^2 (bias is not regularised)
                    grad_weight += mu * (weight - global_weight)
                if beta:
                    vel_weight *= beta
                    vel_weight += grad_weight
                    vel_bias *= beta
                    vel_bias += grad_logits.sum(axis=0)
                    weight -= lr * vel_weight
                    bias -= lr * vel_bias
                else:
                    weight -= lr * grad_weight
                    bias -= lr * grad_logits.sum(axis=0)
                loss_sum += batch_loss * len(rows)
                correct += batch_correct
                seen += len(rows)
                steps += 1
                steps_left -= 1
            metrics = {"loss": loss_sum / seen, "accuracy": correct / seen}
            if progress is not None:
                progress(EpochProgress(epoch, config.epochs, metrics["loss"], metrics["accuracy"]))
        if steps == 0:  # max_steps=0: no training, report how the received model does here
            evaluated = self.evaluate(params)
            metrics = dict(evaluated.metrics)
        metrics["steps"] = float(steps)
        return FitResult(Params({"weight": weight, "bias": bias}), n, metrics)

    def evaluate(self, params: Params) -> EvalResult:
        check_against_spec(params, self.param_spec, what="params", finite=False)
        weight, bias = params["weight"], params["bias"]
        loss_sum = 0.0
        correct = 0
        for start in range(0, len(self._y), _EVAL_BATCH):
            xb, yb = self._x[start : start + _EVAL_BATCH], self._y[start : start + _EVAL_BATCH]
            batch_loss, batch_correct, _ = _softmax_step(xb @ weight + bias, yb, need_grad=False)
            loss_sum += batch_loss * len(yb)
            correct += batch_correct
        return EvalResult(len(self._y), {"loss": loss_sum / len(self._y), "accuracy": correct / len(self._y)})


def _softmax_step(logits: np.ndarray, y: np.ndarray, *, need_grad: bool = True) -> tuple[float, int, np.ndarray]:
    """Mean cross-entropy, correct count and d(mean loss)/d(logits) of one batch; reuses ``logits``."""
    rows = np.arange(len(y))
    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
    logits -= logits.max(axis=1, keepdims=True)  # shift: exp cannot overflow
    true_logit = logits[rows, y]
    np.exp(logits, out=logits)
    totals = logits.sum(axis=1)
    # log-sum-exp form: finite even when the true class's probability underflows to 0.
    loss = float(np.mean(np.log(totals) - true_logit, dtype=np.float64))
    if not need_grad:
        return loss, correct, logits
    logits /= totals[:, None]  # now the softmax probabilities
    logits[rows, y] -= 1.0
    logits /= np.float32(len(y))
    return loss, correct, logits
