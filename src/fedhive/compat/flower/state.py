"""A Flower ``Context.state`` (a ``RecordDict``) kept in fedhive's ``ctx.state``, and so on disk.

A site's ``ctx.state`` is written after every call by fedhive's ``StateStore`` (one
``state.safetensors``: arrays as tensors, everything else as JSON in its metadata; never pickle).
``save_state`` puts a Flower app's ``RecordDict`` there in that form:

- every ``Array`` of an ``ArrayRecord`` as a numpy array under ``flwr.state/<record>/<array>``;
  an array that is not a plain numpy one (another ``stype``, or a dtype safetensors cannot hold)
  as its raw bytes, with its ``dtype``, ``shape`` and ``stype`` beside them, as Flower keeps it;
- under ``flwr.state``, one JSON text: the run it belongs to, and the records in order, each with
  its name and kind and, for a ``ConfigRecord`` or ``MetricRecord``, its values (bytes as base64).

``load_state`` makes the ``RecordDict`` again, for the same run only: as under Flower, whose
SuperNode keeps a Context per run, a new session starts from an empty state, while a client
process restarted in the middle of a session takes its state up where it was last saved.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType

from fedhive.errors import AppError

STATE_KEY = "flwr.state"
ARRAY_PREFIX = "flwr.state/"
# numpy dtypes safetensors stores as they are; others travel as raw bytes.
_NATIVE = {np.dtype(t) for t in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")}
_NATIVE |= {np.dtype(t) for t in ("float16", "float32", "float64")}


def save_state(state: RecordDict, run: str, into: MutableMapping[str, Any]) -> None:
    """Replace the Flower state held in ``into`` (a fedhive ``ctx.state``) by ``state``."""
    for key in [k for k in into if k == STATE_KEY or k.startswith(ARRAY_PREFIX)]:
        del into[key]
    records: list[dict[str, Any]] = []
    for i, (name, record) in enumerate(state.items()):
        if isinstance(record, ArrayRecord):
            arrays = []
            for j, (array_name, array) in enumerate(record.items()):
                key = f"{ARRAY_PREFIX}{i}/{j}"
                entry: dict[str, Any] = {"name": array_name, "key": key}
                if array.stype == SType.NUMPY and np.dtype(array.dtype) in _NATIVE:
                    into[key] = array.numpy()
                else:
                    into[key] = np.frombuffer(array.data, dtype=np.uint8).copy()
                    entry |= {"dtype": array.dtype, "shape": list(array.shape), "stype": array.stype}
                arrays.append(entry)
            records.append({"name": name, "kind": "arrays", "arrays": arrays})
        elif isinstance(record, MetricRecord):
            records.append({"name": name, "kind": "metrics", "values": dict(record)})
        elif isinstance(record, ConfigRecord):
            values = {k: _encode(v) for k, v in record.items()}
            records.append({"name": name, "kind": "config", "values": values})
        else:
            raise AppError(f"context.state[{name!r}] is a {type(record).__name__}, not a Flower record")
    into[STATE_KEY] = json.dumps({"run": run, "records": records})


def load_state(stored: Mapping[str, Any], run: str) -> RecordDict:
    """The Flower state ``save_state`` left in ``stored`` for ``run``; empty for another run or none."""
    text = stored.get(STATE_KEY)
    if not isinstance(text, str):
        return RecordDict()
    try:
        doc = json.loads(text)
        if doc.get("run") != run:
            return RecordDict()
        state = RecordDict()
        for record in doc["records"]:
            state[record["name"]] = _record(record, stored)
    except (ValueError, KeyError, TypeError) as exc:
        raise AppError(f"the saved Flower context.state cannot be read ({type(exc).__name__}: {exc})") from None
    return state


def _record(record: Mapping[str, Any], stored: Mapping[str, Any]) -> ArrayRecord | MetricRecord | ConfigRecord:
    kind = record["kind"]
    if kind == "metrics":
        return MetricRecord(dict(record["values"]))
    if kind == "config":
        return ConfigRecord({k: _decode(v) for k, v in record["values"].items()})
    if kind != "arrays":
        raise ValueError(f"unknown record kind {kind!r}")
    arrays = ArrayRecord()
    for entry in record["arrays"]:
        value = np.asarray(stored[entry["key"]])
        if "stype" in entry:  # raw bytes, as Flower held them
            arrays[entry["name"]] = Array(entry["dtype"], tuple(entry["shape"]), entry["stype"], value.tobytes())
        else:
            arrays[entry["name"]] = Array.from_numpy_ndarray(value)
    return arrays


def _encode(value: Any) -> Any:
    # A ConfigRecord value: int, float, str, bytes, bool or a list of one of them. JSON keeps all
    # but bytes, which become {"bytes": base64} (a dict is never a value itself).
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return base64.b64decode(value["bytes"])
    return value
