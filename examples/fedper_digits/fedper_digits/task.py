"""The example's own code, nothing federated about it: the digits data, a Dirichlet label-skew
partitioner, a local train/test split and a small numpy network (a body and any number of heads).

Nothing is loaded at import time: ``load_data`` reads scikit-learn's bundled digits (offline) on
first use and caches them (every virtual client of a simulation lives in one process).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

NUM_FEATURES = 64  # 8x8 images
NUM_CLASSES = 10

Arrays = dict[str, np.ndarray]


@functools.lru_cache(maxsize=1)
def load_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 1797 rows of 64 pixels scaled to [0, 1] (float32) and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    features = (np.asarray(x, dtype=np.float32) / 16.0).reshape(-1, NUM_FEATURES)
    labels = np.asarray(y, dtype=np.int64)
    features.flags.writeable = False
    labels.flags.writeable = False
    return features, labels


@functools.lru_cache(maxsize=8)
def holdout_split(holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): a per-class shuffle fixed by ``seed``; the held-out share of
    every class is kept back for the server side's ``central_evaluate``."""
    _, y = load_data()
    rng = np.random.default_rng([seed, 0])
    train, held = [], []
    for k in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(y == k))
        cut = round(len(rows) * holdout_fraction)
        held.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def dirichlet_partition(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_rows: int = 10, max_tries: int = 1000
) -> list[np.ndarray]:
    """Positions into ``labels`` for each of ``num_partitions`` clients, with a Dirichlet(``alpha``)
    label skew: each class is shared out among the clients in proportions drawn from
    Dirichlet(alpha, ..., alpha) (small alpha: most of a class goes to one or two clients).
    Redrawn until every client holds at least ``min_rows`` rows; the same for the same arguments."""
    if num_partitions < 1 or alpha <= 0:
        raise ValueError(f"need num_partitions >= 1 and alpha > 0, got {num_partitions} and {alpha}")
    if num_partitions * min_rows > len(labels):
        raise ValueError(f"{len(labels)} rows cannot give {num_partitions} clients {min_rows} rows each")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for k in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == k))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
                part.append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_rows:
            return out
    raise ValueError(f"no Dirichlet({alpha}) partition in {max_tries} draws gives every client {min_rows} rows")


@functools.lru_cache(maxsize=8)
def client_parts(
    num_partitions: int, alpha: float, min_rows: int, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Every client's rows of the dataset (indices into ``load_data``), from the training rows."""
    train_rows, _ = holdout_split(holdout_fraction, seed)
    _, y = load_data()
    positions = dirichlet_partition(y[train_rows], num_partitions, alpha, seed, min_rows)
    return tuple(train_rows[p] for p in positions)


def local_split(rows: np.ndarray, test_fraction: float, seed: Sequence[int] | int) -> tuple[np.ndarray, np.ndarray]:
    """One client's rows cut into (local train, local test): a shuffle fixed by ``seed``, at least
    one row on each side. Not stratified."""
    shuffled = np.random.default_rng(seed).permutation(rows)
    n_test = min(max(1, round(len(rows) * test_fraction)), len(rows) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


# --- the model: body (64 -> hidden, ReLU) and linear heads (hidden -> 10) -------------------------


def init_body(hidden: int, rng: np.random.Generator) -> Arrays:
    return {
        "body.weight": rng.normal(0.0, np.sqrt(2.0 / NUM_FEATURES), (NUM_FEATURES, hidden)).astype(np.float32),
        "body.bias": np.zeros(hidden, np.float32),
    }


def init_head(prefix: str, hidden: int, rng: np.random.Generator) -> Arrays:
    return {
        f"{prefix}.weight": rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, NUM_CLASSES)).astype(np.float32),
        f"{prefix}.bias": np.zeros(NUM_CLASSES, np.float32),
    }


def _hidden(params: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = x @ params["body.weight"] + params["body.bias"]
    return z, np.maximum(z, 0.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def train(
    params: Arrays,
    heads: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
) -> dict[str, float]:
    """Minibatch SGD (with momentum) on ``params`` in place: the body and every head in ``heads``,
    each head on its own cross-entropy, the body on their sum. Returns each head's mean loss over
    the last epoch."""
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    rng = np.random.default_rng(seed)
    rows = np.arange(len(y))
    last = dict.fromkeys(heads, 0.0)
    for _ in range(epochs):
        totals = dict.fromkeys(heads, 0.0)
        order = rng.permutation(rows)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            z, h = _hidden(params, xb)
            grads: Arrays = {}
            dh = np.zeros_like(h)
            for head in heads:
                w, b = params[f"{head}.weight"], params[f"{head}.bias"]
                p = _softmax(h @ w + b)
                totals[head] += float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).sum())
                d = p
                d[np.arange(len(yb)), yb] -= 1.0
                d /= len(yb)
                grads[f"{head}.weight"] = h.T @ d
                grads[f"{head}.bias"] = d.sum(axis=0)
                dh += d @ w.T
            dz = dh * (z > 0)
            grads["body.weight"] = xb.T @ dz
            grads["body.bias"] = dz.sum(axis=0)
            for name, g in grads.items():
                v = velocity[name]
                v *= momentum
                v += g
                params[name] -= lr * v
        last = {head: total / max(len(y), 1) for head, total in totals.items()}
    return last


def test(params: Mapping[str, np.ndarray], head: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the body with ``head`` on (x, y)."""
    _, h = _hidden(params, x)
    p = _softmax(h @ params[f"{head}.weight"] + params[f"{head}.bias"])
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return float((p.argmax(axis=1) == y).mean()), loss
