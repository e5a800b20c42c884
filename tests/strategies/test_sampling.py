from __future__ import annotations

import numpy as np
import pytest

from fedhive.strategies.sampling import ClientSampling, poisson_sample

CLIENTS = [f"c{i:03d}" for i in range(200)]


def test_each_client_is_drawn_independently_with_probability_q() -> None:
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(CLIENTS, 0)
    sizes = []
    for _ in range(2000):
        chosen = poisson_sample(CLIENTS, 0.1, rng)
        assert chosen == sorted(chosen)  # the candidates' order is kept
        sizes.append(len(chosen))
        for c in chosen:
            counts[c] += 1
    # The sample size is Binomial(200, 0.1): mean 20, variance 18 (not a fixed size).
    assert np.mean(sizes) == pytest.approx(20, abs=0.5)
    assert np.var(sizes) == pytest.approx(18, rel=0.15)
    rates = np.array(list(counts.values())) / 2000
    assert abs(rates.mean() - 0.1) < 0.005 and rates.min() > 0.06 and rates.max() < 0.14


def test_edge_rates_and_empty_samples() -> None:
    rng = np.random.default_rng(1)
    assert poisson_sample(CLIENTS, 1.0, rng) == CLIENTS
    assert poisson_sample(CLIENTS, 0.0, rng) == []
    assert poisson_sample([], 0.5, rng) == []
    empties = sum(not poisson_sample(["a", "b"], 0.1, rng) for _ in range(4000))
    assert empties / 4000 == pytest.approx(0.81, abs=0.03)  # (1 - q)^n: a round may draw nobody
    with pytest.raises(ValueError, match="probability"):
        poisson_sample(CLIENTS, 1.5, rng)


def test_the_draw_is_a_function_of_the_generator() -> None:
    a = poisson_sample(CLIENTS, 0.3, np.random.default_rng([7, 3, 0]))
    b = ClientSampling("poisson", 0.3).select(CLIENTS, np.random.default_rng([7, 3, 0]))
    assert a == b
