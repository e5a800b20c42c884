"""``ctx.state`` on disk: a client's own arrays and scalars, kept across rounds and restarts.

One file, ``state.safetensors``: the arrays as tensors and the scalars (numbers, strings, booleans)
as JSON in its metadata, written to a temporary file in the same directory and renamed over the old
one, so a client killed mid-write leaves the previous state whole. Files are readable by their owner only: a
personalised layer is as private as the data it was trained on. No pickle: a state file never
runs code when it is read.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedhive.errors import AppError, StorageError

STATE_FILE = "state.safetensors"
SCALARS_KEY = "fedhive.scalars"


class StateStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def load(self) -> dict[str, Any]:
        path = self.directory / STATE_FILE
        if not path.is_file():
            return {}
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                state: dict[str, Any] = json.loads(meta.get(SCALARS_KEY, "{}"))
                state.update({key: f.get_tensor(key) for key in f.keys()})  # noqa: SIM118 (not a dict)
        except (OSError, ValueError, SafetensorError) as exc:
            raise StorageError(f"cannot read the client state {path}: {exc}") from None
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        data = encode_state(state)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomic(self.directory / STATE_FILE, data)
        except OSError as exc:
            raise StorageError(f"cannot write the client state in {self.directory}: {exc}") from None


def encode_state(state: Mapping[str, Any]) -> bytes:
    """``state`` as the bytes of a state file; ``AppError`` for a value it cannot hold. Also how a
    simulation's worker process hands a client's state back to the process that keeps it."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise AppError(f"ctx.state keys must be strings, got {key!r}")
        if isinstance(value, np.ndarray):
            arrays[key] = np.ascontiguousarray(value)
        elif isinstance(value, bool | int | float | str) or value is None:
            scalars[key] = value
        elif isinstance(value, np.generic):
            scalars[key] = value.item()
        else:
            raise AppError(
                f"ctx.state[{key!r}] is a {type(value).__name__}: state holds numpy arrays, numbers, strings "
                "and booleans"
            )
    return st_save(arrays, metadata={SCALARS_KEY: json.dumps(scalars)})


def decode_state(data: bytes) -> dict[str, Any]:
    """The state ``encode_state`` gave ``data`` for (``ValueError``/``SafetensorError`` if it is not one)."""
    (size,) = struct.unpack_from("<Q", data)  # safetensors: a little-endian u64, then the JSON header
    meta = json.loads(bytes(data[8 : 8 + size])).get("__metadata__") or {}
    state: dict[str, Any] = json.loads(meta.get(SCALARS_KEY, "{}"))
    state.update(st_load(data))
    return state


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
