"""Update compression: round trips (hypothesis), error feedback, and forged payloads rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedhive.core import codec
from fedhive.core.compression import (
    UpdateCompressor,
    compressed_spec,
    decode_update,
    parse_compression,
)
from fedhive.core.params import Params
from fedhive.errors import ConfigError, NonFiniteError, PayloadError

LIMIT = 1 << 24
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
shapes = st.sampled_from([(7,), (3, 5), (1,), (4, 2, 3)])


def model(w_shape: tuple[int, ...] = (4, 3)) -> Params:
    rng = np.random.default_rng(0)
    return Params(
        {
            "w": rng.standard_normal(w_shape).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
            "steps": np.array([5], dtype=np.int64),  # a counter: sent whole
        }
    )


def step(base: Params, scale: float = 0.01, seed: int = 1) -> Params:
    rng = np.random.default_rng(seed)
    return Params(
        {
            n: (a + scale * rng.standard_normal(a.shape).astype(np.float32)) if a.dtype.kind == "f" else a + 1
            for n, a in base.items()
        }
    )


def roundtrip(method: str, base: Params, update: Params, *, as_bytes: bool) -> Params:
    comp = UpdateCompressor(method)
    comp.begin_round(base)
    wire, body = comp.compress(update)
    payload = codec.encode(wire) if as_bytes else wire
    return decode_update(
        payload,
        claimed=body.get("compression"),
        session=method,
        expected=base.spec,
        base=base,
        max_bytes=LIMIT,
        what="update from c1",
    )


def forged(method: str, wire: dict[str, np.ndarray], base: Params, claimed: str | None = None) -> Params:
    return decode_update(
        codec.encode(wire),
        claimed=claimed or method,
        session=method,
        expected=base.spec,
        base=base,
        max_bytes=LIMIT,
        what="update from evil",
    )


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["none", "float16", "INT8", " topk:0.01", "topk:1"])
def test_methods_parse(text: str) -> None:
    assert parse_compression(text).name == text.strip().lower().replace("topk:1", "topk:1")


@pytest.mark.parametrize("text", ["gzip", "topk:0", "topk:1.5", "topk:x", "topk:nan", "int4"])
def test_unknown_methods_are_one_line_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_compression(text)
    assert "\n" not in str(info.value)


def test_session_config_validates_and_canonicalises() -> None:
    from fedhive.runtime.session_config import make_config

    assert make_config(compression="TopK:0.010").compression == "topk:0.01"
    with pytest.raises(ConfigError, match="compression"):
        make_config(compression="zip")


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data(), method=st.sampled_from(["none", "float16", "int8"]), as_bytes=st.booleans())
def test_dense_methods_round_trip_within_their_precision(
    shape: tuple[int, ...], data: st.DataObject, method: str, as_bytes: bool
) -> None:
    base = Params({"w": data.draw(arrays(np.float32, shape, elements=finite))})
    upd = Params({"w": data.draw(arrays(np.float32, shape, elements=finite))})
    out = roundtrip(method, base, upd, as_bytes=as_bytes)
    assert out.spec == base.spec
    delta = upd["w"].astype(np.float64) - base["w"]
    err = np.abs(out["w"].astype(np.float64) - upd["w"])
    peak = float(np.abs(delta).max())
    # float32 rounding of base + delta, plus the method's own rounding of the delta
    tol = {"none": 0.0, "float16": 1e-3 * np.abs(delta) + 1e-4, "int8": peak / 254 * 1.01 + 1e-4}[method]
    assert np.all(err <= tol + 1e-4 * np.abs(upd["w"]))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data(), fraction=st.sampled_from([0.01, 0.2, 0.5, 1.0]), as_bytes=st.booleans())
def test_topk_sends_the_largest_entries_of_the_delta(
    shape: tuple[int, ...], data: st.DataObject, fraction: float, as_bytes: bool
) -> None:
    base = Params({"w": data.draw(arrays(np.float32, shape, elements=finite))})
    upd = Params({"w": data.draw(arrays(np.float32, shape, elements=finite))})
    out = roundtrip(f"topk:{fraction}", base, upd, as_bytes=as_bytes)
    delta = (upd["w"] - base["w"]).reshape(-1)
    got = (out["w"] - base["w"]).reshape(-1)
    k = max(1, int(np.ceil(fraction * delta.size)))
    sent = np.flatnonzero(got)
    assert len(sent) <= k
    if len(sent):  # every entry sent is at least as large as every entry left out
        left = np.setdiff1d(np.arange(delta.size), sent)
        assert not left.size or np.abs(delta[sent]).min() >= np.abs(delta[left]).max() - 1e-3


def test_non_float_tensors_travel_whole_and_unchanged() -> None:
    base = model()
    upd = step(base)
    for method in ("float16", "int8", "topk:0.1"):
        out = roundtrip(method, base, upd, as_bytes=True)
        assert out["steps"].tolist() == [6] and out["steps"].dtype == np.int64


def test_int8_is_about_four_times_smaller_than_float32() -> None:
    base = model((64, 10))
    wire, body = _compress("int8", base, step(base))
    assert body == {"compression": "int8"}
    assert 3.8 < base.nbytes / wire.nbytes < 4.1
    assert sorted(wire) == sorted(["w.__q", "w.__scale", "b.__q", "b.__scale", "steps"])


def _compress(method: str, base: Params, upd: Params) -> tuple[Params, dict[str, object]]:
    comp = UpdateCompressor(method)
    comp.begin_round(base)
    return comp.compress(upd)


def test_none_sends_the_update_itself() -> None:
    base = model()
    upd = step(base)
    wire, body = _compress("none", base, upd)
    assert wire is upd and body == {}


def test_topk_error_feedback_delivers_what_was_left_out() -> None:
    """With a constant delta every round, error feedback sends every coordinate eventually: the sum
    of what arrived approaches the sum of what was trained."""
    base = Params({"w": np.zeros(100, np.float32)})
    delta = np.linspace(0.1, 1.0, 100, dtype=np.float32)
    comp = UpdateCompressor("topk:0.1")
    arrived = np.zeros(100, np.float64)
    rounds = 200
    for _ in range(rounds):
        comp.begin_round(base)
        wire, _ = comp.compress(Params({"w": base["w"] + delta}))
        out = decode_update(
            wire, claimed="topk:0.1", session="topk:0.1", expected=base.spec, base=base, max_bytes=LIMIT, what="u"
        )
        arrived += out["w"]
    # without feedback the 90 smallest coordinates would never arrive at all
    assert np.all(arrived > 0)
    # what has not arrived yet is the residual alone, bounded by what ~10 rounds of top-10 carry
    assert np.all(np.abs(arrived - rounds * delta) < 10.0)


# -- forged payloads ------------------------------------------------------------------------------


def honest_int8(base: Params) -> dict[str, np.ndarray]:
    wire, _ = _compress("int8", base, step(base))
    return dict(wire)


def test_wrong_method_is_rejected() -> None:
    base = model()
    with pytest.raises(PayloadError, match="compressed as 'float16', but the session uses 'int8'"):
        forged("int8", honest_int8(base), base, claimed="float16")
    wire, _ = _compress("none", base, step(base))
    with pytest.raises(PayloadError, match="compressed as 'none'"):
        decode_update(wire, claimed=None, session="int8", expected=base.spec, base=base, max_bytes=LIMIT, what="update")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w: w.pop("w.__scale"), r"missing \['w.__scale'\]"),
        (lambda w: w.update({"w.__extra": np.zeros(1, np.float32)}), r"unexpected \['w.__extra'\]"),
        (lambda w: w.update({"w.__q": w["w.__q"].astype(np.int16)}), "dtype int16, expected int8"),
        (lambda w: w.update({"w.__q": w["w.__q"][:2]}), "has shape"),
        (lambda w: w.update({"w.__scale": np.array(np.nan, np.float32)}), "NaN or infinite"),
        (lambda w: w.update({"w.__scale": np.array(-1.0, np.float32)}), "scale -1.0 is negative"),
        (lambda w: w["w.__q"].__setitem__((0, 0), -128), "outside the symmetric range"),
        (lambda w: w.update({"w.__scale": np.array(3e38, np.float32)}), "NaN or infinite"),
    ],
)
def test_forged_int8_updates_are_rejected_in_one_line(mutate: object, message: str) -> None:
    base = model()
    wire = {n: np.array(a) for n, a in honest_int8(base).items()}
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(PayloadError, match=message) as info:
        forged("int8", wire, base)
    assert "\n" not in str(info.value) and "update from evil" in str(info.value)


def honest_topk(base: Params) -> dict[str, np.ndarray]:
    wire, _ = _compress("topk:0.25", base, step(base))
    return {n: np.array(a) for n, a in wire.items()}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w: w["w.__idx"].__setitem__(-1, 12), r"index out of range \[0, 12\)"),
        (lambda w: w["w.__idx"].__setitem__(0, -1), "index out of range"),
        (lambda w: w["w.__idx"].__setitem__(1, w["w.__idx"][0]), "not strictly increasing"),
        (lambda w: w.update({"w.__idx": w["w.__idx"][::-1].copy()}), "not strictly increasing"),
        (lambda w: w.update({"w.__idx": np.arange(4, dtype=np.int32)}), "has shape"),  # k is 3
        (lambda w: w.update({"w.__val": np.full(3, np.inf, np.float32)}), "NaN or infinite"),
        (lambda w: w.update({"w.__idx": w["w.__idx"].astype(np.int64)}), "dtype int64, expected int32"),
    ],
)
def test_forged_topk_updates_are_rejected_in_one_line(mutate: object, message: str) -> None:
    base = model()
    wire = honest_topk(base)
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(PayloadError, match=message) as info:
        forged("topk:0.25", wire, base)
    assert "\n" not in str(info.value)


def test_float16_nan_is_rejected() -> None:
    base = Params({"w": np.zeros(3, np.float32)})
    wire = {"w.__f16": np.array([0, np.nan, 0], np.float16)}
    with pytest.raises(NonFiniteError, match=r"'w\.__f16' holds NaN or infinite values"):
        forged("float16", wire, base)


def test_size_limit_applies_to_the_compressed_payload() -> None:
    base = model()
    data = codec.encode(honest_int8(base))
    with pytest.raises(PayloadError, match="exceeds the limit"):
        decode_update(data, claimed="int8", session="int8", expected=base.spec, base=base, max_bytes=64, what="u")


def test_compressed_spec_is_exact() -> None:
    spec = model().spec
    topk = compressed_spec(spec, parse_compression("topk:0.25"))
    assert [(t.name, t.shape, t.dtype) for t in topk.tensors] == [
        ("w.__idx", (3,), "int32"),
        ("w.__val", (3,), "float32"),
        ("b.__idx", (1,), "int32"),
        ("b.__val", (1,), "float32"),
        ("steps", (1,), "int64"),
    ]
