"""Every strategy with updates near float32's limit (3e38): no intermediate overflows to Inf or NaN.

A float32 product or square of such values is Inf; FedAvg's once turned one client's update of
3e38 into a NaN global model. Here numpy raises on any overflow (``errstate``), so a strategy
passes only if it forms every product, square and distance in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.core.params import Params
from fedhive.strategies.base import Update
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples

BIG = np.float32(3e38)
SPECS = [
    "fedavg",
    "fedavg:unweighted",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "trimmed-mean:beta=0.2",
    "krum:f=1",
    "multi-krum:f=1,m=2",
    "dp-fedavg:clip=1.0,noise=0.5",
    "fedavg+clip=5.0",
]


def updates(values: list[float], examples: int = 10**9) -> list[Update]:
    """One update per value, every entry of it that value (float32), each with ``examples``."""
    return [Update(f"c{i}", Params({"w": np.full((4, 3), v, np.float32)}), examples) for i, v in enumerate(values)]


@pytest.mark.parametrize("spec", SPECS)
def test_updates_of_3e38_never_overflow(spec: str) -> None:
    strategy = parse_strategy(spec)
    g = Params({"w": np.zeros((4, 3), np.float32)})
    for rnd in (1, 2):  # twice: server state (momentum, Adam's v) must stay finite too
        agg = strategy.aggregator(g)
        with np.errstate(over="raise", invalid="raise"):
            for u in updates([float(BIG)] * 5):
                agg.add(u)
            new = strategy.apply(g, agg.result(), rnd)
            state = strategy.state()
        assert np.isfinite(new["w"]).all(), spec
        assert all(np.isfinite(a).all() for a in state.values() if a.dtype.kind == "f"), spec


@pytest.mark.parametrize("spec", ["fedavg", "fedmedian", "trimmed-mean:beta=0.2", "multi-krum:f=1,m=2"])
def test_the_mean_of_values_near_the_limit_is_exact(spec: str) -> None:
    """Weights of 10^9 and values of +-3e38: exact in float64, Inf in float32."""
    strategy = parse_strategy(spec)
    g = Params({"w": np.zeros((4, 3), np.float32)})
    agg = strategy.aggregator(g)
    with np.errstate(over="raise", invalid="raise"):
        for u in updates([float(BIG), float(BIG), float(BIG), float(BIG), float(BIG)]):
            agg.add(u)
        result = agg.result().params["w"]
    np.testing.assert_array_equal(result, np.full((4, 3), BIG))


def test_the_screen_measures_3e38_in_float64_and_refuses_it() -> None:
    g = Params({"w": np.full((4, 3), -BIG, np.float32)})
    screen = UpdateScreen(g, max_model_jump=1000.0)
    with np.errstate(over="raise", invalid="raise"):
        distance, why = screen.refusal(updates([float(BIG)])[0].params)
    assert distance == pytest.approx(2 * 3e38 * np.sqrt(12), rel=1e-6)
    assert why is None  # the model itself is that large: 3e38 is 1x its scale, no jump

    small = Params({"w": np.zeros((4, 3), np.float32)})
    _, why = UpdateScreen(small, max_model_jump=1000.0).refusal(updates([float(BIG)])[0].params)
    assert why is not None and why.startswith("exploded")
    nan = Params({"w": np.full((4, 3), np.nan, np.float32)})
    assert UpdateScreen(small).refusal(nan)[1] == "not finite: tensor 'w' holds NaN or infinite values"
    assert UpdateScreen(small).checks_finite


def test_the_norm_bound_refuses_what_lies_farther() -> None:
    g = Params({"w": np.zeros((4, 3), np.float32)})
    screen = UpdateScreen(g, max_update_norm=1.0)
    near = Params({"w": np.full((4, 3), 0.25, np.float32)})  # norm sqrt(12)/4 = 0.87
    far = Params({"w": np.full((4, 3), 0.5, np.float32)})  # norm 1.73
    assert screen.refusal(near)[1] is None
    why = screen.refusal(far)[1]
    assert why is not None and "max_update_norm=1" in why


@pytest.mark.parametrize(
    ("reported", "registered", "factor", "ceiling", "weight"),
    [
        (10**9, 100, 2.0, None, 200),  # capped by what it registered with
        (150, 100, 2.0, None, 150),  # honest: as reported
        (10**9, 0, 2.0, None, 10**9),  # registered no count: only a ceiling caps it
        (10**9, 0, 2.0, 500, 500),
        (10**9, 100, None, 50, 50),
        (10**9, 100, 2.0, 10**4, 200),
    ],
)
def test_a_clients_weight_is_capped_by_what_the_session_knows(
    reported: int, registered: int, factor: float | None, ceiling: int | None, weight: int
) -> None:
    assert capped_examples(reported, registered, factor=factor, ceiling=ceiling) == weight
