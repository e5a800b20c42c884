from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.core.params import Params
from fedhive.strategies.base import Update
from fedhive.strategies.fedavg import _CHUNK, WeightedMeanAggregator
from fedhive.strategies.server_optimizers import float64_template

SHAPES = {"w": (3, 5), "b": (5,)}


def make_update(seed: int, n: int, cid: str = "c") -> Update:
    rng = np.random.default_rng(seed)
    p = Params({k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()})
    return Update(cid, p, n, {"loss": float(rng.random())})


def template() -> Params:
    return Params({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})


def test_hand_computed_weighted_and_unweighted_means() -> None:
    a = Update("a", Params({"w": np.array([1.0, 2.0], np.float32)}), 1, {"loss": 1.0})
    b = Update("b", Params({"w": np.array([3.0, 6.0], np.float32)}), 3, {"loss": 3.0})
    tmpl = Params({"w": np.zeros(2, np.float32)})
    w = WeightedMeanAggregator(tmpl)
    u = WeightedMeanAggregator(tmpl, weighted=False)
    for agg in (w, u):
        agg.add(a)
        agg.add(b)
    rw, ru = w.result(), u.result()
    np.testing.assert_allclose(rw.params["w"], [2.5, 5.0])
    np.testing.assert_allclose(ru.params["w"], [2.0, 4.0])
    assert rw.params["w"].dtype == np.float32
    assert rw.num_examples == 4 and rw.count == 2
    assert rw.metrics["loss"] == 2.5  # metrics are example-weighted


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_merged_partials_equal_the_flat_aggregate(sizes: list[int], groups: int, seed: int) -> None:
    updates = [make_update(seed + i, n, f"c{i}") for i, n in enumerate(sizes)]
    flat = WeightedMeanAggregator(template())
    for u in updates:
        flat.add(u)
    parts = [WeightedMeanAggregator(template()) for _ in range(groups)]
    for i, u in enumerate(updates):
        parts[i % groups].add(u)
    top = WeightedMeanAggregator(template())
    for p in parts:
        if p.count:
            top.merge(p.partial())
    a, b = flat.result(), top.result()
    assert a.count == b.count == len(updates) and a.num_examples == b.num_examples
    for k in SHAPES:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-6, atol=1e-7)
    assert abs(a.metrics["loss"] - b.metrics["loss"]) < 1e-9


def test_large_tensors_are_folded_in_chunks_exactly() -> None:
    n = 100_003  # not a multiple of the chunk size
    x = np.linspace(-1, 1, n, dtype=np.float32)
    agg = WeightedMeanAggregator(Params({"w": np.zeros(n, np.float32)}))
    agg.add(Update("a", Params({"w": x}), 2))
    agg.add(Update("b", Params({"w": -x}), 1))
    np.testing.assert_allclose(agg.result().params["w"], x / 3, rtol=1e-6, atol=1e-8)


def float64_reference(xs: list[np.ndarray], ws: list[float]) -> np.ndarray:
    """The weighted mean with numpy in float64 throughout, summed in arrival order."""
    acc = np.zeros(xs[0].shape, np.float64)
    for x, w in zip(xs, ws, strict=True):
        acc += x.astype(np.float64) * w
    return acc / sum(ws)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 8),
    size=st.sampled_from([1, 7, 1000, _CHUNK + 3]),
    scale=st.integers(-20, 20),
    weights=st.lists(st.integers(1, 10**6), min_size=8, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_fedavg_of_float32_updates_is_the_float64_mean(
    n: int, size: int, scale: int, weights: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    xs = [(rng.standard_normal(size) * 2.0**scale + rng.integers(-3, 4)).astype(np.float32) for _ in range(n)]
    ref = float64_reference(xs, [float(w) for w in weights[:n]])
    tmpl = Params({"w": np.zeros(size, np.float32)})
    full = WeightedMeanAggregator(float64_template(tmpl))  # result in float64 (server optimisers)
    plain = WeightedMeanAggregator(tmpl)  # result rounded to the model's float32
    for i, x in enumerate(xs):
        for agg in (full, plain):
            agg.add(Update(f"c{i}", Params({"w": x}), weights[i]))
    got = full.result().params["w"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(plain.result().params["w"], ref.astype(np.float32))
