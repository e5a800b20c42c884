from __future__ import annotations

import math

import pytest

from fedhive.strategies.privacy_accountant import (
    RdpAccountant,
    gaussian_rdp,
    rdp_to_epsilon,
    sampled_gaussian_rdp,
)


def test_one_unsampled_round_matches_the_closed_form() -> None:
    # eps(a) = a / (2 z^2) + log(1/delta) / (a - 1); over real a the minimum is at
    # a* = 1 + z sqrt(2 log(1/delta)) with eps* = 1/(2 z^2) + sqrt(2 log(1/delta)) / z.
    log_inv_delta = math.log(1e5)
    closed = 0.5 + math.sqrt(2 * log_inv_delta)  # 5.2985
    eps = RdpAccountant(1.0).epsilon(1, 1e-5)
    assert closed <= eps <= closed + 0.01
    assert eps == pytest.approx(6 / 2 + log_inv_delta / 5)  # the best grid order is a = 6


def test_gaussian_rdp_is_alpha_over_2_z_squared() -> None:
    assert gaussian_rdp(10.0, 20.0) == 0.1
    assert sampled_gaussian_rdp(1.0, 10.0, 20) == 0.1
    assert gaussian_rdp(0.0, 2.0) == math.inf


def test_sampled_gaussian_matches_published_values() -> None:
    # Reference values from the TensorFlow Privacy RDP accountant tests.
    assert 10 * sampled_gaussian_rdp(0.1, 2.0, 5) == pytest.approx(0.07737, abs=1e-5)
    assert 50 * sampled_gaussian_rdp(0.01, 2.5, 5) == pytest.approx(0.00218075, abs=1e-7)
    assert 50 * sampled_gaussian_rdp(0.01, 2.5, 50) == pytest.approx(0.023846, abs=1e-6)
    orders = list(range(2, 33))
    rdp = [10000 * sampled_gaussian_rdp(0.01, 4.0, a) for a in orders]
    eps, order = rdp_to_epsilon(orders, rdp, 1e-5)
    assert eps == pytest.approx(1.258575, abs=1e-6) and order == 20


def test_sampling_amplifies_privacy() -> None:
    assert sampled_gaussian_rdp(0.0, 1.0, 8) == 0.0
    assert sampled_gaussian_rdp(0.1, 1.0, 8) < gaussian_rdp(1.0, 8)
    assert RdpAccountant(1.0, 0.1).epsilon(10, 1e-5) < RdpAccountant(1.0).epsilon(10, 1e-5)


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    for q in (1.0, 0.05):
        acc = RdpAccountant(1.1, q)
        eps = [acc.epsilon(t, 1e-5) for t in (0, 1, 10, 100)]
        assert eps[0] == 0.0 and eps == sorted(eps) and len(set(eps)) == 4
        by_noise = [RdpAccountant(z, q).epsilon(10, 1e-5) for z in (0.5, 1.0, 2.0, 4.0)]
        assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4


def test_no_noise_means_no_privacy() -> None:
    assert RdpAccountant(0.0).epsilon(1, 1e-5) == math.inf


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="delta"):
        RdpAccountant(1.0).epsilon(1, 0.0)
    with pytest.raises(ValueError, match="sample rate"):
        RdpAccountant(1.0, 1.5)
