from __future__ import annotations

import numpy as np
import pytest

from fedhive.core.params import Params
from fedhive.strategies.base import Update
from fedhive.strategies.dp_fedavg import DPFedAvg
from fedhive.strategies.privacy_accountant import RdpAccountant


def p(*w: float) -> Params:
    return Params({"w": np.array(w, np.float32)})


def run_round(s: DPFedAvg, g: Params, models: list[Params], rnd: int, examples: list[int] | None = None) -> Params:
    agg = s.aggregator(g)
    for i, m in enumerate(models):
        agg.add(Update(f"c{i}", m, examples[i] if examples else 1))
    return s.apply(g, agg.result(), rnd)


def test_zero_noise_gives_the_unweighted_mean_of_clipped_deltas() -> None:
    s = DPFedAvg(clip=1.0, noise=0.0, seed=0)
    # deltas [3, 4] -> [0.6, 0.8]; [0.3, 0.4] within the bound; [0, -2] -> [0, -1]; counts ignored
    new = run_round(s, p(1, 1), [p(4, 5), p(1.3, 1.4), p(1, -1)], 1, examples=[1, 100, 5])
    np.testing.assert_allclose(new["w"], [1 + 0.9 / 3, 1 + 0.2 / 3], rtol=1e-6)
    assert new["w"].dtype == np.float32


def test_noise_has_std_z_times_clip_over_n() -> None:
    size = 200_000
    g = Params({"w": np.zeros(size, np.float32)})
    rng = np.random.default_rng(1)
    models = [Params({"w": (rng.normal(size=size) * 1e-4).astype(np.float32)}) for _ in range(4)]
    clean = run_round(DPFedAvg(clip=1.0, noise=0.0, seed=7), g, models, 3)
    noisy = run_round(DPFedAvg(clip=1.0, noise=2.0, seed=7), g, models, 3)
    noise = noisy["w"].astype(np.float64) - clean["w"]
    assert noise.std() == pytest.approx(2.0 * 1.0 / 4, rel=0.01)  # z C / n = 0.5
    assert abs(noise.mean()) < 0.005


def test_noise_is_a_function_of_seed_and_round() -> None:
    g, models = p(0, 0, 0), [p(0.1, 0.2, 0.3)]
    a = run_round(DPFedAvg(noise=1.0, seed=5), g, models, 2)
    b = run_round(DPFedAvg(noise=1.0, seed=5), g, models, 2)
    c = run_round(DPFedAvg(noise=1.0, seed=5), g, models, 3)
    d = run_round(DPFedAvg(noise=1.0, seed=6), g, models, 2)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"]) and not np.array_equal(a["w"], d["w"])


def test_default_seed_is_random_and_carried_by_the_state() -> None:
    s, t = DPFedAvg(), DPFedAvg()
    assert s.seed != t.seed
    t.load_state(s.state())
    assert t.seed == s.seed
    assert "seed" not in s.config()


def test_resume_from_state_continues_identically() -> None:
    g, models = p(0, 0), [p(0.5, -0.5), p(0.2, 0.1)]
    straight = DPFedAvg(noise=1.0)
    h1 = run_round(straight, g, models, 1)
    saved = straight.state()
    h2 = run_round(straight, h1, models, 2)
    resumed = DPFedAvg(noise=1.0)  # another random seed until the checkpoint is loaded
    resumed.load_state(saved)
    np.testing.assert_array_equal(run_round(resumed, h1, models, 2)["w"], h2["w"])
    assert resumed.rounds == straight.rounds == 2


def test_epsilon_is_reported_after_each_round_and_grows() -> None:
    s = DPFedAvg(clip=1.0, noise=1.0, delta=1e-5, seed=0)
    assert s.round_metrics() == {"epsilon": 0.0, "delta": 1e-5}
    eps = []
    g = p(0)
    for r in range(1, 4):
        g = run_round(s, g, [p(0.1), p(0.2)], r)
        eps.append(s.round_metrics()["epsilon"])
    assert eps[0] < eps[1] < eps[2]
    assert eps[2] == RdpAccountant(1.0).epsilon(3, 1e-5)
    assert s.privacy_spent(1e-3) < s.privacy_spent()


def test_counters_keep_the_global_value() -> None:
    g = Params({"w": np.zeros(1, np.float32), "n": np.array([3], np.int64)})
    m = Params({"w": np.ones(1, np.float32), "n": np.array([99], np.int64)})
    assert run_round(DPFedAvg(noise=0.0, seed=0), g, [m], 1)["n"].tolist() == [3]


def test_dp_fedavg_is_mergeable_with_the_noise_added_once() -> None:
    s = DPFedAvg(clip=1.0, noise=0.0, seed=0)
    part = s.aggregator(p(0))
    part.add(Update("a", p(5), 10))  # clipped to 1
    top = s.aggregator(p(0))
    top.add(Update("b", p(0.5), 1))
    top.merge(part.partial())
    np.testing.assert_allclose(s.apply(p(0), top.result(), 1)["w"], [0.75])
