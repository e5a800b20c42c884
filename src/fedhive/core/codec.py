"""Parameters <-> safetensors bytes, validated before anything touches a model.

Why safetensors and never pickle: unpickling runs arbitrary code chosen by whoever produced the
bytes, so a single malicious client (or anyone who can write to the artifact store) would own
every process that loads its update. safetensors is a JSON header plus raw little-endian tensor
data: decoding it can only ever produce arrays.

Decoding reads and checks the header first (names, shapes, dtypes, total size) so that a forged
header cannot make us allocate or parse gigabytes, then builds read-only array views onto the
received buffer (no copy), then checks finiteness.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedhive.core.params import Params, ParamSpec, TensorSpec, check_against_spec, check_finite
from fedhive.errors import PayloadError

CODEC = "safetensors"
# All of fedhive's metadata sits under one key as sorted JSON: safetensors writes its metadata map
# in hash order, which differs between processes, and a model file must be bitwise reproducible.
_META_KEY = "fedhive"
# safetensors dtype tag -> numpy dtype (the subset a model uses)
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 16 * 1024 * 1024


_TAGS = {dt: tag for tag, dt in _DTYPES.items()}
# safetensors orders tensor data by its dtype enum, descending, then by name.
_LAYOUT_RANK = {tag: i for i, tag in enumerate(["I64", "F64", "F32", "I32", "F16", "I16", "I8", "U8", "BOOL"])}


def encode(params: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise to safetensors bytes; tensor order and ``metadata`` are kept in the header."""
    return b"".join(encode_parts(params, metadata))


def encode_parts(params: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> list[memoryview]:
    """The safetensors serialisation as consecutive buffers (the header, then each tensor's data,
    viewed in place): a writer can hash and store a model without assembling it in memory.

    Written here rather than with ``safetensors.numpy.save``, which copies every tensor three
    times (``tobytes``, the Rust buffer, the returned ``bytes``) and took ~1 s for a 100 MB model:
    the format is an 8-byte length, a JSON header and the raw little-endian data, so ``encode``
    writes it with a single ``bytes.join``. ``tests/core/test_codec.py`` checks that the
    safetensors library reads what this writes, byte for byte.
    """
    meta = {_META_KEY: json.dumps({"order": list(params), "meta": dict(metadata or {})}, sort_keys=True)}
    header: dict[str, Any] = {"__metadata__": meta}
    buffers: list[memoryview] = []
    offset = 0
    arrays = {n: _little_endian(a, n) for n, a in params.items()}
    # The library's layout (so the bytes are the same as its own): by dtype, then by name.
    for name in sorted(arrays, key=lambda n: (_LAYOUT_RANK[_TAGS[arrays[n].dtype]], n)):
        arr = arrays[name]
        nbytes = arr.nbytes
        header[name] = {"dtype": _TAGS[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        buffers.append(arr.reshape(-1).data.cast("B"))
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as the library writes it
    return [memoryview(struct.pack("<Q", len(head)) + head), *buffers]


def _little_endian(arr: np.ndarray, name: str) -> np.ndarray:
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype not in _TAGS:
        raise PayloadError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot store")
    return np.asarray(arr, dtype=dtype, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d


def read_header(data: bytes | memoryview, *, max_bytes: int) -> tuple[ParamSpec, dict[str, str]]:
    """Parse and sanity-check the header: (spec in stored order, metadata)."""
    spec, metadata, _ = _parse_header(data, max_bytes=max_bytes)
    return spec, metadata


def _parse_header(
    data: bytes | memoryview, *, max_bytes: int
) -> tuple[ParamSpec, dict[str, str], list[tuple[int, int]]]:
    """(spec, metadata, absolute byte range of each tensor), all checked against the buffer."""
    size = len(data)
    if size > max_bytes:
        raise PayloadError(f"payload of {size} bytes exceeds the limit of {max_bytes} bytes")
    if size < 8:
        raise PayloadError("payload is not safetensors: shorter than its 8-byte header length")
    (hlen,) = struct.unpack("<Q", bytes(data[:8]))
    if hlen > min(_MAX_HEADER, size - 8):
        raise PayloadError(f"payload is not safetensors: header length {hlen} is out of range")
    try:
        header = json.loads(bytes(data[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"payload is not safetensors: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise PayloadError("payload is not safetensors: header is not a JSON object")
    raw_meta = header.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict):
        raise PayloadError("payload is not safetensors: metadata is not an object")
    order, metadata = _fedhive_meta(raw_meta, header)
    body = size - 8 - hlen
    tensors = []
    ranges = []
    for name in order:
        info = header[name]
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise PayloadError(f"payload tensor {name!r} has a malformed or unsupported header entry") from None
        if any(d < 0 for d in shape) or not 0 <= start <= end <= body:
            raise PayloadError(f"payload tensor {name!r} has offsets outside the payload")
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise PayloadError(f"payload tensor {name!r}: byte length does not match its shape")
        tensors.append(TensorSpec(name, shape, dtype.name))
        ranges.append((8 + hlen + start, 8 + hlen + end))
    return ParamSpec(tuple(tensors)), metadata, ranges


def _fedhive_meta(raw: dict[str, object], header: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """(tensor order, user metadata). Files written by other tools have no order: sort by name."""
    packed = raw.get(_META_KEY)
    if packed is None:
        return sorted(header), {str(k): str(v) for k, v in raw.items()}
    try:
        data = json.loads(str(packed))
        order, meta = data["order"], data.get("meta", {})
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PayloadError("payload metadata is malformed") from None
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(header) or not isinstance(meta, dict):
        raise PayloadError("payload metadata tensor order does not match its tensors")
    return [str(n) for n in order], {str(k): str(v) for k, v in meta.items()}


def decode(
    data: bytes | memoryview,
    *,
    expected: ParamSpec | None = None,
    max_bytes: int,
    what: str = "payload",
) -> Params:
    """Decode safetensors bytes into read-only views onto ``data`` (zero copy).

    With ``expected``, names/shapes/dtypes must match it exactly and the result follows its order.
    Every float tensor must be finite. Raises ``PayloadError`` naming the first problem.
    """
    spec, _, ranges = _parse_header(data, max_bytes=max_bytes)
    if expected is not None:
        _check_header(spec, expected, what)
    buf = memoryview(data)
    arrays: dict[str, np.ndarray] = {}
    for t, (start, end) in zip(spec.tensors, ranges, strict=True):
        arr = np.frombuffer(buf[start:end], dtype=np.dtype(t.dtype).newbyteorder("<"))
        arrays[t.name] = arr.reshape(t.shape)
    if expected is not None:
        arrays = {n: arrays[n] for n in expected.names}
        check_against_spec(arrays, expected, what=what)
    else:
        check_finite(arrays, what=what)
    return Params(arrays)


def _check_header(spec: ParamSpec, expected: ParamSpec, what: str) -> None:
    got = {t.name: t for t in spec.tensors}
    missing = [n for n in expected.names if n not in got]
    extra = [n for n in got if n not in set(expected.names)]
    if missing or extra:
        raise PayloadError(f"{what} tensor names differ: missing {missing}, unexpected {extra}")
    for t in expected.tensors:
        g = got[t.name]
        if g.shape != t.shape:
            raise PayloadError(f"{what} tensor {t.name!r} has shape {g.shape}, expected {t.shape}")
        if g.dtype != t.dtype:
            raise PayloadError(f"{what} tensor {t.name!r} has dtype {g.dtype}, expected {t.dtype}")
