"""The site's own code: read its CSV file, a numpy softmax regression, its training loop.

``read_csv`` checks every cell: a file fedhive cannot use is a one-line ``fedhive.DataError`` that
names the file, the row (the line of the file: the header is row 1) and the column.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from pathlib import Path
from typing import TextIO

import numpy as np

import fedhive

MAX_BYTES = 256 * 1024 * 1024


def read_csv(
    path: str | os.PathLike[str],
    label: str = "label",
    *,
    num_features: int | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features float32 (n, f), labels int64 (n,), feature column names) of the CSV at ``path``:
    a header row, numeric features and a whole-number label in column ``label``. With
    ``num_features``/``num_classes``, the file must fit a model of that shape: that many feature
    columns, every label below ``num_classes``."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise fedhive.DataError(f"cannot read CSV file {path}: {exc.strerror or exc}") from None
    if stat.st_size > MAX_BYTES:
        raise fedhive.DataError(f"CSV file {path} is {stat.st_size} bytes, over the limit of {MAX_BYTES}")
    return _read(str(path), label, num_features, num_classes, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)  # keyed on the file's mtime and size too: a changed file is read again
def _read(
    path: str, label: str, num_features: int | None, num_classes: int | None, _mtime_ns: int, _size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _parse(f, path, label, num_features, num_classes)
    except UnicodeDecodeError as exc:
        raise fedhive.DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise fedhive.DataError(f"{path}: not a CSV file ({exc})") from None
    except OSError as exc:
        raise fedhive.DataError(f"cannot read CSV file {path}: {exc.strerror or exc}") from None


def _parse(
    f: TextIO, path: str, label: str, num_features: int | None, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise fedhive.DataError(f"{path}: row 1: the file is empty; it needs a header row")
    header = [h.strip() for h in header]
    if label not in header:
        raise fedhive.DataError(f"{path}: row 1: no label column {label!r} (columns: {', '.join(header)})")
    target = header.index(label)
    features = [i for i in range(len(header)) if i != target]
    if not features:
        raise fedhive.DataError(f"{path}: row 1: no feature columns besides the label {label!r}")
    if num_features is not None and len(features) != num_features:
        raise fedhive.DataError(
            f"{path}: row 1: {len(features)} feature columns, the session's model takes num_features={num_features}"
        )
    xs: list[list[float]] = []
    ys: list[int] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines
        if len(row) != len(header):
            raise fedhive.DataError(f"{path}: row {line} has {len(row)} values, the header has {len(header)} columns")
        xs.append([_number(row[i], path, line, header[i]) for i in features])
        ys.append(_label(row[target], path, line, label, num_classes))
    if not ys:
        raise fedhive.DataError(f"{path}: no data rows after the header")
    x = np.asarray(xs, dtype=np.float32)
    y = np.asarray(ys, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y, [header[i] for i in features]


def _number(cell: str, path: str, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise fedhive.DataError(f"{path}: row {line}, column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise fedhive.DataError(f"{path}: row {line}, column {column!r}: {cell!r} is not a finite number")
    return value


def _label(cell: str, path: str, line: int, column: str, num_classes: int | None) -> int:
    value = _number(cell, path, line, column)
    if value != int(value) or value < 0:
        raise fedhive.DataError(f"{path}: row {line}, column {column!r}: {cell!r} is not a class id (0, 1, 2, ...)")
    if num_classes is not None and value >= num_classes:
        raise fedhive.DataError(
            f"{path}: row {line}, column {column!r}: class {cell!r} is not below the session's "
            f"num_classes={num_classes}"
        )
    return int(value)


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, held out): a shuffle fixed by ``seed``; nothing held out for 0."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(round(n * test_fraction), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` scaled with the mean and standard deviation of ``reference`` (the site's training rows)."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


# --- softmax regression ---------------------------------------------------------------------------


def init_model(num_features: int, num_classes: int) -> dict[str, np.ndarray]:
    return {"weight": np.zeros((num_features, num_classes), np.float32), "bias": np.zeros(num_classes, np.float32)}


def _probabilities(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    logits = x @ model["weight"] + model["bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def train(
    model: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
) -> None:
    """Minibatch SGD with momentum on the mean cross-entropy, ``model`` changed in place."""
    velocity = {k: np.zeros_like(v) for k, v in model.items()}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            d = _probabilities(model, xb)
            d[np.arange(len(yb)), yb] -= 1.0
            d /= len(yb)
            grads = {"weight": xb.T @ d, "bias": d.sum(axis=0)}
            for name, g in grads.items():
                velocity[name] *= momentum
                velocity[name] += g
                model[name] -= (lr * velocity[name]).astype(np.float32)


def test(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y)."""
    p = _probabilities(model, x)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return loss, float((p.argmax(axis=1) == y).mean())
