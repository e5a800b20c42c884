"""The workloads of bench/compare_flower.py, in plain numpy: imported by both sides alike.

This file runs in two virtual environments (fedhive's and bench/.flwr-venv), so it imports numpy
and nothing else. Both sides call the very same functions with the very same arguments; the only
difference between the two runs is the framework around them.

- ``logreg_*``: binary logistic regression, 10,000 weights + 1 bias, 5 full-batch gradient steps
  per round on 50 samples x 10,000 features. A client's data is derived from (seed, client index)
  when it trains, on both sides: holding 1000 clients' data (2 GB) in memory would measure the
  workload's memory rather than the framework's, and Flower's ClientApp is rebuilt per message
  anyway.
- ``logreg`` with ``COMPUTE_STEPS`` steps: the same client, about 20 ms of work instead of 0.3 ms
  (one core of the 2-core Xeon), for the compute-bound case: every core busy on both sides.
- ``CNN_*``: the settings of the other compute-bound case, the PyTorch CNN example app
  (examples/torch_mnist: its ``task.train`` on mnist5k, which both sides import); numbers only here.
- ``copy_*``: a 25M-parameter float32 model whose "training" is one copy: pure framework cost
  (serialisation, transport, aggregation) of moving 100 MB per client per round.
- ``softmax_*``: multinomial logistic regression trained by minibatch SGD with heavy-ball momentum,
  written out exactly as fedhive's ``logreg-np`` trainer does it, for the runs on a built-in data
  set (digits time to accuracy, case (e) on mnist5k): the Flower side trains with this, the
  fedhive side with its own trainer.
"""

from __future__ import annotations

import numpy as np

SEED = 0
FEATURES, SAMPLES, STEPS, LR = 10_000, 50, 5, 0.003
COMPUTE_STEPS = 330  # about 20 ms per client, data included (0.06 ms a step, 0.8 ms of data)
CNN_HP = {"epochs": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9}  # examples/torch_mnist, per round
CNN_DATA = {"test_fraction": 0.2, "data_seed": 0}  # its run config: the held-out split and the parts
COPY_SHAPE = (5_000, 5_000)  # + a 5,000 bias: 25,005,000 float32 parameters, 100 MB
SOFTMAX_HP = {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9}

_F32 = np.float32


def logreg_initial(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 1 << 20])
    return {
        "weight": rng.standard_normal(FEATURES, dtype=_F32) * _F32(0.01),
        "bias": np.zeros(1, _F32),
    }


def _true_weight(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1 << 21]).standard_normal(FEATURES, dtype=_F32)


_TRUE: dict[int, np.ndarray] = {}


def logreg_client_data(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``index``'s 50 x 10,000 features (multiples of 1/64 in [-2, 2)) and 0/1 labels.

    Random bytes rather than normal draws: 0.8 ms instead of 8 ms per client on the 2-core
    machine, so the per-round work stays dominated by training and framework, not by a generator.
    """
    if seed not in _TRUE:
        _TRUE[seed] = _true_weight(seed)
    rng = np.random.default_rng([seed, index])
    x = np.frombuffer(rng.bytes(SAMPLES * FEATURES), np.int8).astype(_F32).reshape(SAMPLES, FEATURES)
    x *= _F32(1 / 64)
    noise = rng.standard_normal(SAMPLES, dtype=_F32)
    y = ((x @ _TRUE[seed]) + _F32(8.0) * noise > 0).astype(_F32)
    return x, y


def logreg_fit(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = STEPS, lr: float = LR
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``steps`` full-batch gradient steps on the mean binary cross-entropy.

    Returns new (weight, bias) (the inputs are not modified), and the loss and accuracy of the
    starting model on this data.
    """
    w, b = weight.copy(), bias.copy()
    step = _F32(lr)
    n = _F32(len(y))
    loss = acc = 0.0
    for i in range(steps):
        z = x @ w + b[0]
        p = 1.0 / (1.0 + np.exp(-z))
        if i == 0:
            loss = float(np.mean(np.logaddexp(0.0, z) - y * z, dtype=np.float64))
            acc = float(np.mean((z > 0) == (y > 0.5)))
        err = (p - y) / n
        w -= step * (x.T @ err)
        b -= step * err.sum(keepdims=True)
    return w, b, loss, acc


def copy_initial(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 1 << 22])
    return {
        "weight": rng.random(COPY_SHAPE, dtype=_F32) - _F32(0.5),
        "bias": np.zeros(COPY_SHAPE[0], _F32),
    }


def copy_fit(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cheapest honest client update: a fresh copy of the received model."""
    return {k: v.copy() for k, v in arrays.items()}


def derive_seed(seed: int, rnd: int, index: int) -> int:
    """fedhive's per-(session seed, round, client) seed (runtime/session_config.py)."""
    return (seed * 1_000_003 + rnd * 9_176 + index * 7_919) % (2**31 - 1)


def softmax_fit(
    weight: np.ndarray,
    bias: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Minibatch SGD with heavy-ball momentum; the maths of fedhive's ``NumpyLogRegTrainer.fit``."""
    weight, bias = weight.copy(), bias.copy()
    step, beta = _F32(lr), _F32(momentum)
    vel_w, vel_b = np.zeros_like(weight), np.zeros_like(bias)
    n = len(y)
    batch = min(batch_size, n)
    rng = np.random.default_rng(seed)
    loss = acc = 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            xb, yb = x[rows], y[rows]
            batch_loss, batch_correct, grad = _softmax_step(xb @ weight + bias, yb)
            vel_w *= beta
            vel_w += xb.T @ grad
            vel_b *= beta
            vel_b += grad.sum(axis=0)
            weight -= step * vel_w
            bias -= step * vel_b
            loss_sum += batch_loss * len(rows)
            correct += batch_correct
        loss, acc = loss_sum / n, correct / n
    return weight, bias, loss, acc


def softmax_evaluate(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss, correct, _ = _softmax_step(x @ weight + bias, y, need_grad=False)
    return loss, correct / len(y)


def _softmax_step(logits: np.ndarray, y: np.ndarray, *, need_grad: bool = True) -> tuple[float, int, np.ndarray]:
    rows = np.arange(len(y))
    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
    logits -= logits.max(axis=1, keepdims=True)
    true_logit = logits[rows, y]
    np.exp(logits, out=logits)
    totals = logits.sum(axis=1)
    loss = float(np.mean(np.log(totals) - true_logit, dtype=np.float64))
    if not need_grad:
        return loss, correct, logits
    logits /= totals[:, None]
    logits[rows, y] -= 1.0
    logits /= _F32(len(y))
    return loss, correct, logits


def norm(arrays: dict[str, np.ndarray]) -> float:
    """L2 norm of all parameters together, in float64."""
    return float(np.sqrt(sum(float(np.dot(a.ravel().astype(np.float64), a.ravel())) for a in arrays.values())))
