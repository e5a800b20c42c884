from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import NonFiniteError, PayloadError

MB = 1 << 20


def params() -> Params:
    return Params(
        {
            "layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "layer.bias": np.ones(2, np.float32),
            "steps": np.array([3], np.int64),
        }
    )


def test_round_trip_keeps_order_values_and_dtypes() -> None:
    p = params()
    out = codec.decode(codec.encode(p), expected=p.spec, max_bytes=MB)
    assert list(out) == list(p)
    for n in p:
        assert out[n].dtype == p[n].dtype
        np.testing.assert_array_equal(out[n], p[n])


def test_decode_is_zero_copy_and_read_only() -> None:
    data = codec.encode(params())
    out = codec.decode(data, max_bytes=MB)
    assert not out["layer.weight"].flags.writeable  # views onto the received bytes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: {**a, "layer.weight": np.zeros((3, 2), np.float32)}, "has shape (3, 2), expected (2, 3)"),
        (lambda a: {**a, "layer.bias": np.ones(2, np.float64)}, "has dtype float64, expected float32"),
        (lambda a: {k: v for k, v in a.items() if k != "steps"}, "missing ['steps']"),
        (lambda a: {**a, "extra": np.ones(1, np.float32)}, "unexpected ['extra']"),
    ],
)
def test_spec_mismatch_names_the_problem(mutate, message) -> None:
    p = params()
    bad = codec.encode(Params(mutate(dict(p))))
    with pytest.raises(PayloadError, match=re.escape(message)):
        codec.decode(bad, expected=p.spec, max_bytes=MB)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(value: float) -> None:
    p = params()
    w = p["layer.weight"].copy()
    w[1, 2] = value
    with pytest.raises(NonFiniteError, match=r"'layer\.weight' holds NaN or infinite"):
        codec.decode(codec.encode(Params({**p, "layer.weight": w})), expected=p.spec, max_bytes=MB)


def test_oversized_payload_rejected_before_parsing() -> None:
    data = codec.encode(params())
    with pytest.raises(PayloadError, match="exceeds the limit of 10 bytes"):
        codec.decode(data, max_bytes=10)


def test_forged_header_offsets_rejected() -> None:
    header = {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * 16
    with pytest.raises(PayloadError, match="offsets outside the payload"):
        codec.decode(data, max_bytes=MB)


@pytest.mark.parametrize("data", [b"", b"1234", b"\xff" * 8 + b"{}", struct.pack("<Q", 2) + b"[]"])
def test_garbage_is_a_payload_error(data: bytes) -> None:
    with pytest.raises(PayloadError):
        codec.decode(data, max_bytes=MB)


def test_pickle_bytes_are_not_executed() -> None:
    import pickle

    evil = pickle.dumps({"w": np.zeros(2)})
    with pytest.raises(PayloadError):
        codec.decode(evil, max_bytes=MB)


_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_DTYPES),
            st.lists(st.integers(0, 4), max_size=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_encoding_is_the_safetensors_format(tensors: list[tuple[type, list[int], bool]]) -> None:
    # fedhive writes safetensors itself (one copy instead of three); the library is the judge.
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for i, (dtype, shape, transposed) in enumerate(tensors):
        arr = (rng.random(shape) * 100).astype(dtype)
        arrays[f"t{i}"] = arr.T if transposed else arr  # non-contiguous input too
    data = codec.encode(arrays)
    loaded = safetensors.numpy.load(data)
    assert set(loaded) == set(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape
        np.testing.assert_array_equal(loaded[name], arr)
    meta = {"fedhive": json.dumps({"meta": {}, "order": list(arrays)}, sort_keys=True)}
    assert data == safetensors.numpy.save({n: np.asarray(a, order="C") for n, a in arrays.items()}, metadata=meta)


def test_big_endian_input_is_stored_little_endian() -> None:
    p = {"w": np.arange(4, dtype=">f4")}
    out = codec.decode(codec.encode(p), max_bytes=MB)
    assert out["w"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(out["w"], p["w"])
