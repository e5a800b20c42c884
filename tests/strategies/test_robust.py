from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import AggregateResult, Partial, Strategy, Update
from fedhive.strategies.krum import Krum, KrumAggregator, krum_scores, pairwise_sq_distances
from fedhive.strategies.median import FedMedian, TrimmedMean


def p(*w: float) -> Params:
    return Params({"w": np.array(w, np.float32)})


def aggregate(strategy: Strategy, models: list[Params], examples: list[int] | None = None) -> AggregateResult:
    agg = strategy.aggregator(Params({n: np.zeros_like(a) for n, a in models[0].items()}))
    for i, m in enumerate(models):
        agg.add(Update(f"c{i}", m, examples[i] if examples else 1, {"loss": float(i)}))
    return agg.result()


def test_median_odd_count_is_the_middle_value_per_coordinate() -> None:
    r = aggregate(FedMedian(), [p(1, 10), p(2, 20), p(100, -5)])
    np.testing.assert_array_equal(r.params["w"], [2, 10])
    assert r.params["w"].dtype == np.float32 and r.count == 3


def test_median_even_count_averages_the_two_middle_values() -> None:
    r = aggregate(FedMedian(), [p(1), p(2), p(3), p(100)])
    np.testing.assert_array_equal(r.params["w"], [2.5])


def test_median_ignores_reported_example_counts_but_weights_metrics() -> None:
    r = aggregate(FedMedian(), [p(1), p(2), p(3)], examples=[1, 1, 1000])
    np.testing.assert_array_equal(r.params["w"], [2])
    assert r.num_examples == 1002
    assert r.metrics["loss"] == pytest.approx((0 * 1 + 1 * 1 + 2 * 1000) / 1002)


def test_trimmed_mean_drops_beta_fraction_at_each_end() -> None:
    # n = 5, beta = 0.2: drop 1 largest and 1 smallest per coordinate
    r = aggregate(TrimmedMean(beta=0.2), [p(1, 5), p(2, -100), p(3, 6), p(4, 7), p(100, 8)])
    np.testing.assert_allclose(r.params["w"], [3, 6])  # mean(2,3,4), mean(5,6,7)


def test_trimmed_mean_rounds_the_cut_down() -> None:
    # n = 5, beta = 0.1: floor(0.5) = 0, nothing dropped: the plain mean
    r = aggregate(TrimmedMean(beta=0.1), [p(1), p(2), p(3), p(4), p(100)])
    np.testing.assert_allclose(r.params["w"], [22])


@pytest.mark.parametrize("strategy", [FedMedian(), TrimmedMean(beta=0.2), Krum(f=1), Krum(f=1, m=3)])
def test_robust_rules_resist_an_outlier(strategy: Strategy) -> None:
    honest = [p(1.0, 1.0), p(1.1, 0.9), p(0.9, 1.1), p(1.05, 0.95)]
    r = aggregate(strategy, [*honest, p(1e6, -1e6)])
    assert np.abs(r.params["w"] - 1.0).max() <= 0.1


# Five points in the plane; a Krum score sums the squared distances to the n - f - 2 = 2 nearest.
KRUM_POINTS = [p(0, 0), p(1, 0), p(0, 2), p(1, 1), p(10, 10)]
# a: b 1, d 2 -> 3;  b: a 1, d 1 -> 2;  c: d 2, a 4 -> 6;  d: b 1, a 2 -> 3;  e: d 162, c 164 -> 326


def stacked(models: list[Params]) -> KrumAggregator:
    agg = KrumAggregator(Params({"w": np.zeros(2, np.float32)}), f=1, m=1)
    for i, m in enumerate(models):
        agg.add(Update(f"c{i}", m, 1))
    return agg


def test_krum_distances_and_scores_hand_computed() -> None:
    dist = pairwise_sq_distances(stacked(KRUM_POINTS).stack)
    assert dist[0].tolist() == pytest.approx([0, 1, 4, 2, 200])
    assert dist[4].tolist() == pytest.approx([200, 181, 164, 162, 0])
    assert krum_scores(dist, f=1).tolist() == pytest.approx([3, 2, 6, 3, 326])


def test_krum_selects_the_lowest_score() -> None:
    agg = stacked(KRUM_POINTS)
    r = agg.result()
    np.testing.assert_array_equal(r.params["w"], [1, 0])  # client b, exactly
    assert agg.selected == ["c1"]
    assert r.count == 5


def test_multi_krum_averages_the_m_best() -> None:
    r = aggregate(Krum(f=1, m=3), KRUM_POINTS)  # b, a, d
    np.testing.assert_allclose(r.params["w"], [2 / 3, 1 / 3], rtol=1e-6)


def test_multi_krum_default_m_is_n_minus_f() -> None:
    r = aggregate(Krum(f=1, m=None), KRUM_POINTS)  # the four best: all but e
    np.testing.assert_allclose(r.params["w"], [0.5, 0.75])


def test_krum_needs_2f_plus_3_updates() -> None:
    with pytest.raises(ConfigError, match="at least 2f\\+3 = 7"):
        aggregate(Krum(f=2), KRUM_POINTS)
    with pytest.raises(ConfigError, match="m=6"):
        aggregate(Krum(f=1, m=6), KRUM_POINTS)


@pytest.mark.parametrize("strategy", [FedMedian(), TrimmedMean(beta=0.2), Krum(f=1)])
def test_robust_aggregators_are_not_mergeable(strategy: Strategy) -> None:
    assert not strategy.mergeable
    agg = strategy.aggregator(p(0))
    assert not agg.mergeable
    with pytest.raises(NotImplementedError):
        agg.merge(Partial(p(0), 1.0, 1, 1))
    with pytest.raises(ValueError, match="no updates"):
        agg.result()


def test_stack_grows_past_its_initial_capacity_and_keeps_every_row() -> None:
    models = [Params({"w": np.full((2, 3), i, np.float32), "n": np.array([i], np.int64)}) for i in range(11)]
    r = aggregate(FedMedian(), models)
    np.testing.assert_array_equal(r.params["w"], np.full((2, 3), 5))
    assert r.params["n"].dtype == np.int64 and r.params["n"].tolist() == [5]


def test_float64_models_are_stacked_in_float64() -> None:
    a, b, c = (Params({"w": np.array([x], np.float64)}) for x in (1 + 1e-12, 1 + 2e-12, 1 + 3e-12))
    r = aggregate(FedMedian(), [a, b, c])
    assert r.params["w"].dtype == np.float64 and r.params["w"][0] == 1 + 2e-12


def random_models(seed: int, n: int) -> list[Params]:
    rng = np.random.default_rng(seed)
    return [
        Params({"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)})
        for _ in range(n)
    ]


def aggregate_labelled(strategy: Strategy, labelled: list[tuple[str, Params]]) -> AggregateResult:
    agg = strategy.aggregator(labelled[0][1])
    for cid, m in labelled:
        agg.add(Update(cid, m, 1))
    return agg.result()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 9), seed=st.integers(0, 2**16), data=st.data())
def test_robust_aggregators_do_not_depend_on_arrival_order(n: int, seed: int, data: st.DataObject) -> None:
    labelled = [(f"c{i}", m) for i, m in enumerate(random_models(seed, n))]
    shuffled = data.draw(st.permutations(labelled))
    f = (n - 3) // 2  # n = 3 gives f = 0: one neighbour, so the two closest updates tie
    for strategy in (FedMedian(), TrimmedMean(beta=0.25), Krum(f=f), Krum(f=f, m=None), Krum(f=0, m=2)):
        a, b = aggregate_labelled(strategy, labelled), aggregate_labelled(strategy, shuffled)
        for k in a.params:  # bit for bit: sums run in sorted or best-first order
            np.testing.assert_array_equal(a.params[k], b.params[k])
