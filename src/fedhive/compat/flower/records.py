"""fedhive weights and metrics <-> Flower records, through Flower's own conversions.

Flower's weights are an ordered list of arrays. In an ``ArrayRecord`` they are named by its keys
(a PyTorch ``state_dict``'s names, or ``"0"``, ``"1"``, ... from a list); a legacy ``NumPyClient``
gives a bare list, named ``"0"``, ``"1"``, ... here. Order is kept either way, so the names are
stable from round to round and the global model keeps the layout the app expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from fedhive.core.params import Params
from fedhive.errors import AppError


def to_array_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array.from_numpy_ndarray(np.asarray(arr)) for name, arr in weights.items()})


def from_array_record(record: ArrayRecord) -> Params:
    return Params({name: array.numpy() for name, array in record.items()})


def to_parameters(weights: Mapping[str, np.ndarray]) -> Parameters:
    return ndarrays_to_parameters([np.asarray(arr) for arr in weights.values()])


def from_parameters(parameters: Parameters) -> Params:
    return Params({str(i): arr for i, arr in enumerate(parameters_to_ndarrays(parameters))})


def metrics_of(records: Iterable[MetricRecord], *, skip: str = "") -> dict[str, float]:
    """Every value of every ``MetricRecord`` as a fedhive metric; a list value ``v`` becomes
    ``name[0]``, ``name[1]``, ... (fedhive metrics are single numbers)."""
    out: dict[str, float] = {}
    for record in records:
        for name, value in record.items():
            if name == skip:
                continue
            if isinstance(value, list):
                out.update({f"{name}[{i}]": float(v) for i, v in enumerate(value)})
            else:
                out[name] = float(value)
    return out


def scalar_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, float]:
    """A legacy client's ``Metrics`` (``{name: int | float | str | bytes | bool}``) as fedhive
    metrics: the numbers; a string or bytes value cannot be averaged and is refused by name."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, str | bytes):
            raise AppError(f"{where}: metric {name!r} is a {type(value).__name__}, not a number")
        out[name] = float(value)
    return out
