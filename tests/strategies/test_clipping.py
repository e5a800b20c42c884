from __future__ import annotations

import numpy as np
import pytest

from fedhive.core.params import Params
from fedhive.strategies.base import Strategy, Update
from fedhive.strategies.clipping import Clipped, ClippingAggregator, clip_update, delta_norm
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.krum import Krum
from fedhive.strategies.server_optimizers import FedAvgM


def p(*w: float) -> Params:
    return Params({"w": np.array(w, np.float32)})


def test_delta_norm_spans_all_float_tensors_and_skips_counters() -> None:
    g = Params({"a": np.zeros(1, np.float32), "b": np.ones(1, np.float32), "n": np.array([0], np.int64)})
    x = Params({"a": np.array([3], np.float32), "b": np.array([5], np.float32), "n": np.array([100], np.int64)})
    assert delta_norm(x, g) == 5.0  # sqrt(3^2 + 4^2)


def test_clip_scales_the_delta_to_the_bound() -> None:
    g = p(1, 1)
    clipped, scaled = clip_update(Update("a", p(4, 5), 7), g, 1.0)  # delta [3, 4], norm 5
    assert scaled
    np.testing.assert_allclose(clipped.params["w"], [1.6, 1.8])  # 1 + [3, 4] / 5
    assert clipped.num_examples == 7 and clipped.client_id == "a"
    assert delta_norm(clipped.params, g) == pytest.approx(1.0)


def test_an_update_within_the_bound_passes_untouched() -> None:
    u = Update("a", p(1.3, 1.4), 1)
    out, scaled = clip_update(u, p(1, 1), 1.0)  # norm 0.5
    assert out is u and not scaled


def test_clipped_fedavg_hand_computed() -> None:
    s = Clipped(FedAvg(), 1.0)
    agg = s.aggregator(p(0, 0))
    agg.add(Update("a", p(3, 4), 1))  # -> [0.6, 0.8]
    agg.add(Update("b", p(0, -0.5), 3))  # within the bound
    r = agg.result()
    np.testing.assert_allclose(r.params["w"], [(0.6 + 0) / 4, (0.8 - 1.5) / 4], rtol=1e-6)
    assert isinstance(agg, ClippingAggregator) and agg.clipped == 1
    assert r.params["w"].dtype == np.float32


def test_clipping_limits_a_huge_update_under_a_robust_rule_too() -> None:
    s = Clipped(Krum(f=0), 2.0)
    assert not s.mergeable and not s.aggregator(p(0)).mergeable
    agg = s.aggregator(p(0, 0))
    for i, m in enumerate([p(1e6, 0), p(0, 1e6), p(-1e6, 0)]):
        agg.add(Update(f"c{i}", m, 1))
    assert np.linalg.norm(agg.result().params["w"]) <= 2.0 + 1e-6


def test_wrapper_delegates_server_state_and_hooks() -> None:
    inner = FedAvgM(lr=1.0, momentum=0.5)
    s: Strategy = Clipped(inner, 10.0)
    assert s.mergeable and s.name == "fedavgm+clip"
    agg = s.aggregator(p(0))
    agg.add(Update("a", p(2), 1))
    np.testing.assert_allclose(s.apply(p(0), agg.result(), 1)["w"], [2])
    np.testing.assert_allclose(s.state()["momentum/w"], [2])
    fresh = Clipped(FedAvgM(lr=1.0, momentum=0.5), 10.0)
    fresh.load_state(s.state())
    np.testing.assert_allclose(fresh.state()["momentum/w"], [2])
    assert s.config() == {"name": "clip", "max_norm": 10.0, "inner": inner.config()}


def test_merge_passes_through_to_the_inner_aggregator() -> None:
    s = Clipped(FedAvg(weighted=False), 1.0)
    part = s.aggregator(p(0))
    part.add(Update("a", p(5), 1))  # clipped to 1
    top = s.aggregator(p(0))
    top.add(Update("b", p(0.5), 1))
    top.merge(part.partial())
    np.testing.assert_allclose(top.result().params["w"], [0.75])
