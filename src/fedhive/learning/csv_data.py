"""Load a user's CSV file as a ``Dataset``, with errors a spreadsheet user can act on.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first data row is row 2.
Every error is a one-line ``DataError`` naming the row, the column and the offending value.
Parsing is streamed in chunks so a large file costs one float32 copy, not lists of Python strings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedhive.errors import DataError
from fedhive.learning.datasets import Dataset

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_CHUNK_ROWS = 8192  # rows converted to float32 at a time: bounds the memory held as Python strings
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_COLUMNS_SHOWN = 20  # an error lists at most this many column names: a wide file stays one line


def load_csv(path: str | Path, label: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """Features are every column but ``label``; labels may be integers or class names.

    Integer labels keep their numeric order, names are sorted; either way they map to 0..C-1 and
    ``class_names`` holds the original values. The result is marked for standardisation.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read CSV file {path}: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise DataError(f"CSV file {path} is {size} bytes, over the limit of {max_bytes} bytes")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel writes a BOM
            return _parse(csv.reader(handle), label, path)
    except UnicodeDecodeError:
        raise DataError(f"CSV file {path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"CSV file {path} is malformed: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read CSV file {path}: {exc.strerror or exc}") from None


def _parse(reader: Iterator[list[str]], label: str, path: Path) -> Dataset:
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise DataError(f"CSV file {path} is empty: expected a header row with column names")
    columns = [cell.strip() for cell in header]
    if columns.count(label) != 1:
        how = "appears more than once" if label in columns else "is missing"
        shown = ", ".join(columns[:_COLUMNS_SHOWN])
        more = f" and {len(columns) - _COLUMNS_SHOWN} more" if len(columns) > _COLUMNS_SHOWN else ""
        raise DataError(f"label column {label!r} {how} in {path.name}; columns: {shown}{more}")
    if len(columns) < 2:
        raise DataError(f"CSV file {path} has only the label column: no features to learn from")
    label_at = columns.index(label)
    feature_names = tuple(c for i, c in enumerate(columns) if i != label_at)

    chunks: list[np.ndarray] = []
    labels: list[str] = []
    pending: list[list[str]] = []
    pending_rows: list[int] = []
    for row_number, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line, as left at the end of many files
        if len(row) != len(columns):
            raise DataError(f"row {row_number} has {len(row)} fields, but the header has {len(columns)}")
        value = row.pop(label_at).strip()
        if not value:
            raise DataError(f"row {row_number}, column {label!r}: the label is empty")
        labels.append(value)
        pending.append(row)
        pending_rows.append(row_number)
        if len(pending) == _CHUNK_ROWS:
            chunks.append(_to_float32(pending, pending_rows, feature_names))
            pending, pending_rows = [], []
    if pending:
        chunks.append(_to_float32(pending, pending_rows, feature_names))
    if not chunks:
        raise DataError(f"CSV file {path} has a header but no data rows")

    y, class_names = _encode_labels(labels, label)
    x = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return Dataset("csv", x, y, len(class_names), feature_names, class_names, standardize=True)


def _to_float32(rows: list[list[str]], row_numbers: list[int], feature_names: tuple[str, ...]) -> np.ndarray:
    try:
        # One C-level conversion for the whole chunk; the cell-by-cell scan runs only on failure.
        with np.errstate(over="ignore"):  # float32 overflow becomes inf, rejected below
            values = np.array(rows, dtype=np.str_).astype(np.float64).astype(np.float32)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    return np.array(
        [
            [_parse_cell(cell, row_number, column) for cell, column in zip(row, feature_names, strict=True)]
            for row, row_number in zip(rows, row_numbers, strict=True)
        ],
        dtype=np.float32,
    )


def _parse_cell(cell: str, row_number: int, column: str) -> float:
    text = cell.strip()
    where = f"row {row_number}, column {column!r}"
    if not text:
        raise DataError(f"{where}: the value is empty (missing values are not supported)")
    try:
        number = float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None
    if math.isnan(number):
        raise DataError(f"{where}: the value is NaN (missing values are not supported)")
    if not abs(number) <= _FLOAT32_MAX:
        raise DataError(f"{where}: {text!r} is infinite or too large for float32")
    return number


def _encode_labels(labels: list[str], column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    names = sorted(set(labels))
    try:
        # Integer labels sort numerically ("2" before "10"); "1" and "01" are the same class.
        numbers = sorted({int(name) for name in names})
        position = {number: i for i, number in enumerate(numbers)}
        lookup = {name: position[int(name)] for name in names}
        class_names = tuple(str(n) for n in numbers)
    except ValueError:
        lookup = {name: i for i, name in enumerate(names)}
        class_names = tuple(names)
    if len(class_names) < 2:
        raise DataError(f"label column {column!r} holds only {len(class_names)} class: need at least 2")
    return np.array([lookup[v] for v in labels], dtype=np.int64), class_names
