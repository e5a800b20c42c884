"""flhive-sklearn: the model, its parameters as arrays, and each node's share of digits."""

import functools

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

NUM_CLASSES, NUM_FEATURES = 10, 64


@functools.cache
def _digits():
    # Loaded once per process, as Flower's quickstarts keep their FederatedDataset in a global
    # (``fds``) and only cut a partition from it per call.
    return load_digits(return_X_y=True)


def load_data(partition_id: int, num_partitions: int):
    """The node's share of digits (an IID split with a fixed seed), 80% train / 20% test."""
    x, y = _digits()
    order = np.random.default_rng(42).permutation(len(y))
    part = np.array_split(order, num_partitions)[partition_id]
    x, y = x[part] / 16.0, y[part]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def get_model(penalty: str, local_epochs: int) -> LogisticRegression:
    return LogisticRegression(penalty=penalty, max_iter=local_epochs, warm_start=True)


def get_model_params(model: LogisticRegression):
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params):
    model.coef_, model.intercept_ = params
    return model


def set_initial_params(model: LogisticRegression):
    """Zeros, so that the server can hand out a model before any client has trained."""
    model.classes_ = np.arange(NUM_CLASSES)
    model.coef_ = np.zeros((NUM_CLASSES, NUM_FEATURES))
    model.intercept_ = np.zeros((NUM_CLASSES,))
