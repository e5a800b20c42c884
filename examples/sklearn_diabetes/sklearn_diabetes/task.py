"""The user's own scikit-learn code, nothing federated about it: data, model, fitting, scores.

``app.py`` wires it into fedhive; the same functions fit the model centrally
(``tests/examples/test_sklearn_diabetes_example.py`` compares the two).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import SGDRegressor
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Split:
    """The training and held-out rows, features standardised with the training rows' statistics;
    targets in the data's own units (the model learns them standardised, see ``fit``)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float
    y_std: float


@functools.lru_cache(maxsize=4)
def load_split(test_fraction: float, seed: int) -> Split:
    """The diabetes data (442 rows, 10 features; shipped with scikit-learn), split by ``seed``.

    Cached: every virtual client of a simulation lives in the same process."""
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    split = Split((x_train - mean) / std, y_train, (x_test - mean) / std, y_test, y_mean, y_std)
    for a in (split.x_train, split.y_train, split.x_test, split.y_test):
        a.flags.writeable = False  # shared by every client of the process
    return split


def partition(n: int, partition_id: int, num_partitions: int, seed: int) -> np.ndarray:
    """Row indices of part ``partition_id`` of ``num_partitions`` of ``n`` rows: an IID shuffle cut
    in equal parts."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    shuffled = np.random.default_rng(seed).permutation(n)
    return np.sort(np.array_split(shuffled, num_partitions)[partition_id])


def make_model(lr: float, seed: int) -> SGDRegressor:
    """A linear model fitted by plain SGD (constant step ``lr``, a little L2)."""
    return SGDRegressor(learning_rate="constant", eta0=lr, alpha=1e-4, random_state=seed)


def fit(model: SGDRegressor, split: Split, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> SGDRegressor:
    """``epochs`` passes of SGD over (x, y), each in an order drawn from ``seed``; the model learns
    the target standardised with the training split's statistics."""
    target = (y - split.y_mean) / split.y_std
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        model.partial_fit(x[order], target[order])
    return model


def scores(model: SGDRegressor, split: Split, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``mse`` and ``r2`` of ``model`` on (x, y), with ``y`` in the data's own units."""
    predicted = model.predict(x) * split.y_std + split.y_mean
    return {"mse": float(mean_squared_error(y, predicted)), "r2": float(r2_score(y, predicted))}
