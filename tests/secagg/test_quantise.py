"""Fixed point: the secure weighted mean is FedAvg's within 2**-(frac_bits+1) per coordinate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.core.params import Params
from fedhive.errors import ConfigError, ProtocolError
from fedhive.secagg import FixedPoint
from fedhive.secagg.round import LocalSecureSum, round_context


def _exact_mean(base: Params, updates: list[Params], weights: list[int]) -> dict[str, np.ndarray]:
    total = float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for n in base:
        out[n] = np.sum([w * u[n].astype(np.float64) for u, w in zip(updates, weights, strict=True)], axis=0) / total
    return out


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    frac_bits=st.integers(12, 32),
    spread=st.floats(1e-4, 3.9),
)
def test_the_weighted_mean_is_within_the_stated_bound(n: int, seed: int, frac_bits: int, spread: float) -> None:
    rng = np.random.default_rng(seed)
    fp = FixedPoint(clip=4.0, frac_bits=frac_bits)
    base = Params({"w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)})
    updates = [
        Params({k: (v + rng.uniform(-spread, spread, v.shape)).astype(np.float32) for k, v in base.items()})
        for _ in range(n)
    ]
    weights = [int(w) for w in rng.integers(1, 5000, n)]
    total = np.zeros(fp.vector_length(base.spec), np.uint64)
    for u, w in zip(updates, weights, strict=True):
        vector, clipped = fp.encode(u, base, w, w)
        assert clipped == 0
        total += vector
    sums, weight, examples = fp.decode(total, base)
    assert weight == examples == sum(weights)
    exact = _exact_mean(base, updates, weights)
    for name in base:
        error = np.max(np.abs(sums[name] / weight - exact[name]))
        assert error <= fp.error_bound * (1 + 1e-6) + 1e-12


def test_through_the_protocol_the_decoded_sum_is_the_same() -> None:
    rng = np.random.default_rng(5)
    fp = FixedPoint(clip=2.0, frac_bits=28)
    base = Params({"w": rng.standard_normal(50).astype(np.float32)})
    ids = [f"c{i}" for i in range(8)]
    updates = {c: Params({"w": (base["w"] + rng.normal(0, 0.3, 50)).astype(np.float32)}) for c in ids}
    weights = {c: int(rng.integers(1, 100)) for c in ids}
    secure = LocalSecureSum(ids, round_context("s", 3, 0), fp.vector_length(base.spec), 0.5, "t")
    plain = np.zeros(fp.vector_length(base.spec), np.uint64)
    for c in ids:
        vector, _ = fp.encode(updates[c], base, weights[c], weights[c])
        plain += vector
        secure.submit(c, vector)
    assert np.array_equal(secure.finish(gone=ids[:2]), plain)


def test_values_beyond_the_clip_are_clipped_and_counted() -> None:
    fp = FixedPoint(clip=1.0, frac_bits=16)
    base = Params({"w": np.zeros(4, np.float32)})
    vector, clipped = fp.encode(Params({"w": np.array([0.5, 3.0, -2.0, 1.0], np.float32)}), base, 1, 1)
    assert clipped == 2
    sums, _, _ = fp.decode(vector, base)
    assert sums["w"].tolist() == [0.5, 1.0, -1.0, 1.0]


def test_an_overflowing_total_weight_is_refused() -> None:
    fp = FixedPoint(clip=4.0, frac_bits=40)
    base = Params({"w": np.zeros(1, np.float32)})
    vector, _ = fp.encode(base, base, fp.max_total_weight + 1, 1)
    with pytest.raises(ProtocolError, match="overflowed 64-bit fixed point: lower secagg_bits or secagg_clip"):
        fp.decode(vector, base)


def test_bad_settings_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="secagg_bits must be between 8 and 40"):
        FixedPoint(frac_bits=50)
    with pytest.raises(ConfigError, match="secagg_clip"):
        FixedPoint(clip=0)
