from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import Strategy, Update
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi


def p(*w: float) -> Params:
    return Params({"w": np.array(w, np.float32)})


def run_round(strategy: Strategy, global_params: Params, models: list[Params], rnd: int = 1) -> Params:
    agg = strategy.aggregator(global_params)
    for i, m in enumerate(models):
        agg.add(Update(f"c{i}", m, 1))
    return strategy.apply(global_params, agg.result(), rnd)


def test_fedavgm_hand_computed_two_rounds() -> None:
    s = FedAvgM(lr=1.0, momentum=0.5)
    # round 1: mean [1, 2], delta [1, 2], buf [1, 2]
    g1 = run_round(s, p(0, 0), [p(0, 2), p(2, 2)])
    np.testing.assert_allclose(g1["w"], [1, 2])
    # round 2: mean [2, 2], delta [1, 0], buf = 0.5*[1, 2] + [1, 0] = [1.5, 1]
    g2 = run_round(s, g1, [p(2, 2)], rnd=2)
    np.testing.assert_allclose(g2["w"], [2.5, 3])
    assert g2["w"].dtype == np.float32
    np.testing.assert_allclose(s.state()["momentum/w"], [1.5, 1])
    assert int(s.state()["step"]) == 2


def test_fedavgm_learning_rate_scales_the_step() -> None:
    s = FedAvgM(lr=0.5, momentum=0.0)
    np.testing.assert_allclose(run_round(s, p(1, 1), [p(3, -1)])["w"], [2, 0])  # 1 + 0.5*[2, -2]


def test_fedavgm_without_momentum_and_lr_one_is_fedavg() -> None:
    g = p(0.5, -0.25)
    models = [p(1, 2), p(3, 5), p(-1, 0.5)]
    np.testing.assert_allclose(
        run_round(FedAvgM(lr=1.0, momentum=0.0), g, models)["w"], run_round(FedAvg(), g, models)["w"], rtol=1e-6
    )


# One step from global [0, 0] with mean [1, -1]: delta = [1, -1], m = 0.5*delta = [0.5, -0.5],
# v starts at tau^2 = 0.25 and delta^2 = 1, step = lr * m / (sqrt(v) + tau) with lr = 1.
ADAPTIVE_CASES = [
    (FedAdam, 0.5 * 0.25 + 0.5 * 1.0),  # b2*v + (1-b2)*d^2 = 0.625
    (FedYogi, 0.25 + 0.5 * 1.0),  # v - (1-b2)*d^2*sign(v - d^2) = 0.25 + 0.5 = 0.75
    (FedAdagrad, 0.25 + 1.0),  # v + d^2 = 1.25
]


@pytest.mark.parametrize(("cls", "v"), ADAPTIVE_CASES)
def test_adaptive_one_step_hand_computed(cls: type[FedAdam | FedYogi | FedAdagrad], v: float) -> None:
    s = cls(lr=1.0, beta1=0.5, beta2=0.5, tau=0.5)
    new = run_round(s, p(0, 0), [p(1, -1)])
    step = 0.5 / (np.sqrt(v) + 0.5)
    np.testing.assert_allclose(new["w"], [step, -step], rtol=1e-6)
    np.testing.assert_allclose(s.state()["m/w"], [0.5, -0.5])
    np.testing.assert_allclose(s.state()["v/w"], [v, v])


def test_adagrad_with_square_numbers() -> None:
    # tau = 0.75: v = 0.5625 + 1 = 1.5625 = 1.25^2; step = 0.5 / (1.25 + 0.75) = 0.25, times lr 0.1
    s = FedAdagrad(lr=0.1, beta1=0.5, tau=0.75)
    np.testing.assert_allclose(run_round(s, p(2, 2), [p(3, 1)])["w"], [2.025, 1.975], rtol=1e-6)


def test_yogi_shrinks_v_when_it_exceeds_the_squared_delta() -> None:
    s = FedYogi(lr=1.0, beta1=0.0, beta2=0.5, tau=1.0)  # v0 = 1
    run_round(s, p(0), [p(0.5)])  # d^2 = 0.25 < v: v = 1 - 0.5*0.25 = 0.875
    np.testing.assert_allclose(s.state()["v/w"], [0.875])
    adam = FedAdam(lr=1.0, beta1=0.0, beta2=0.5, tau=1.0)
    run_round(adam, p(0), [p(0.5)])  # 0.5*1 + 0.5*0.25
    np.testing.assert_allclose(adam.state()["v/w"], [0.625])


def test_adam_second_round_uses_the_moments() -> None:
    s = FedAdam(lr=1.0, beta1=0.5, beta2=0.5, tau=0.5)
    g1 = run_round(s, p(1, 1), [p(1.5, 0.5)])  # d = +-0.5: m = +-0.25, v = 0.125 + 0.125 = 0.25
    np.testing.assert_allclose(g1["w"], [1.25, 0.75])  # 0.25 / (0.5 + 0.5)
    g2 = run_round(s, g1, [g1], rnd=2)  # d = 0: m = +-0.125, v = 0.125
    step = 0.125 / (np.sqrt(0.125) + 0.5)
    np.testing.assert_allclose(g2["w"], [1.25 + step, 0.75 - step], rtol=1e-6)


def test_apply_leaves_the_global_model_alone_and_keeps_dtypes() -> None:
    g = Params({"w": np.array([1.0, 2.0], np.float32), "d": np.array([1.0], np.float64), "n": np.array([4], np.int64)})
    before = g.copy()
    models = [
        Params({"w": np.array([2.0, 2.0], np.float32), "d": np.array([3.0]), "n": np.array([6], np.int64)}),
        Params({"w": np.array([4.0, 0.0], np.float32), "d": np.array([5.0]), "n": np.array([8], np.int64)}),
    ]
    new = run_round(FedAdam(lr=0.1), g, models)
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])
        assert new[k].dtype == g[k].dtype
    assert new["n"][0] == 7  # non-float tensors take the mean, unoptimised


def random_model(rng: np.random.Generator) -> Params:
    return Params({"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)})


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(lr=0.7, momentum=0.9),
        lambda: FedAdam(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
        lambda: FedYogi(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
        lambda: FedAdagrad(lr=0.05, beta1=0.9, tau=1e-3),
    ],
)
def test_state_round_trip_resumes_bit_identically(make: Callable[[], Strategy]) -> None:
    rng = np.random.default_rng(0)
    rounds = [[random_model(rng), random_model(rng)] for _ in range(3)]
    g0 = Params({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})

    straight = make()
    g = g0
    for r, models in enumerate(rounds, 1):
        g = run_round(straight, g, models, r)

    first = make()
    h = run_round(first, g0, rounds[0], 1)
    saved = {k: v.copy() for k, v in first.state().items()}
    resumed = make()  # a restarted coordinator: fresh strategy, state from the checkpoint
    resumed.load_state(saved)
    for r, models in enumerate(rounds[1:], 2):
        h = run_round(resumed, h, models, r)

    for k in g:
        np.testing.assert_array_equal(h[k], g[k])
    a, b = straight.state(), resumed.state()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_state_is_a_copy() -> None:
    s = FedAvgM(momentum=0.5)
    run_round(s, p(0), [p(1)])
    s.state()["momentum/w"][:] = 99
    np.testing.assert_allclose(s.state()["momentum/w"], [1])


def test_load_state_rejects_another_strategys_state() -> None:
    s = FedAdam()
    with pytest.raises(ConfigError, match="momentum/w"):
        s.load_state({"momentum/w": np.zeros(2, np.float32)})


def test_loaded_state_of_the_wrong_shape_is_refused() -> None:
    s = FedAvgM()
    s.load_state({"momentum/w": np.zeros(3, np.float32), "step": np.array(1)})
    with pytest.raises(ConfigError, match="shape"):
        run_round(s, p(0, 0), [p(1, 1)])


def test_fedadagrad_pseudo_gradient_is_exact() -> None:
    # The case: clients a few float32 ulps above a global model of 1.0, with unequal
    # example counts. A float32 product w * x rounds each term by up to 2**-24 relative, which
    # against a pseudo-gradient of a few 1e-7 was 2.5 % off (3.678e-7 instead of 3.588e-7).
    ulp = 2.0**-23
    g = Params({"w": np.ones(4, np.float32)})
    offsets = [[3, 3, 1, -2], [3, 4, 2, -1], [3, 2, 5, 0]]
    counts = [16, 420, 246]
    models = [Params({"w": (1.0 + np.array(o) * ulp).astype(np.float32)}) for o in offsets]
    xs = np.array([m["w"] for m in models], np.float64)
    w = np.array(counts, np.float64)
    reference = (xs * w[:, None]).sum(axis=0) / w.sum() - 1.0  # numpy, float64 throughout
    assert reference[0] == pytest.approx(3.576e-7, rel=1e-3)

    s = FedAdagrad(lr=0.1, beta1=0.5, tau=1e-3)
    agg = s.aggregator(g)
    for i, m in enumerate(models):
        agg.add(Update(f"c{i}", m, counts[i]))
    aggregate = agg.result()
    pseudo = np.subtract(aggregate.params["w"], g["w"], dtype=np.float64)
    np.testing.assert_allclose(pseudo, reference, rtol=1e-12, atol=0)

    # The step taken from it: float32 state, so float32 accuracy, from the exact pseudo-gradient.
    new = s.apply(g, aggregate, 1)
    m = 0.5 * reference
    v = 1e-6 + reference**2
    np.testing.assert_allclose(s.state()["m/w"], m, rtol=1e-6)
    np.testing.assert_allclose(new["w"], 1.0 + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-7)
