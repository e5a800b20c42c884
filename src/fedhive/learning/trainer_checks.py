"""Checks every trainer runs on what it is given: its data at construction, each ``FitConfig``.

Hyperparameters arrive from users (CLI, REST API, a ``train`` message), so a bad one is a
``ConfigError`` with a readable message, raised before any work starts, not an exception deep in
numpy or torch halfway through a round.
"""

from __future__ import annotations

import math

import numpy as np

from fedhive.app.learner import FitConfig
from fedhive.errors import ConfigError, DataError


def check_training_data(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate features and labels; return them as contiguous float32 and int64 arrays.

    Arrays already in those dtypes are used as they are (no copy): a client's shard may be large.
    """
    if num_classes < 2:
        raise DataError(f"need at least 2 classes, got {num_classes}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D array [rows, features], got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"labels must be a 1-D array with one label per row ({len(x)}), got shape {y.shape}")
    if len(x) == 0:
        raise DataError("no training rows: the data (or this client's partition) is empty")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise DataError(f"features must be numbers and labels integers, got {x.dtype} and {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"labels must lie in 0..{num_classes - 1}, found {low}..{high}")
    features = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(features).all():
        raise DataError("features hold NaN or infinite values")
    return features, y.astype(np.int64, copy=False)


def check_fit_config(config: FitConfig) -> None:
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(f"learning rate must be a positive number, got {config.lr}")
    if not (math.isfinite(config.proximal_mu) and config.proximal_mu >= 0):
        raise ConfigError(f"proximal mu must be zero or positive, got {config.proximal_mu}")
    if not (math.isfinite(config.momentum) and 0 <= config.momentum < 1):
        raise ConfigError(f"momentum must be in [0, 1), got {config.momentum}")
    if config.max_steps is not None and config.max_steps < 0:
        raise ConfigError(f"max steps must be zero or positive, got {config.max_steps}")
