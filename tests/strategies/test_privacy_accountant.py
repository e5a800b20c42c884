from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedhive.strategies.dp_fedavg import DPFedAvg
from fedhive.strategies.privacy_accountant import PrivacyAccountant, RdpAccountant

DELTA = 1e-5  # DPFedAvg's default delta


def reference(noise: float, q: float, rounds: int, delta: float) -> tuple[float, float]:
    """(RDP, PLD) epsilons computed with dp-accounting directly, from the event built by hand."""
    one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise)
    if q < 1:
        one = dp_accounting.PoissonSampledDpEvent(q, one)
    event = dp_accounting.SelfComposedDpEvent(one, rounds)
    r = rdp.RdpAccountant()
    r.compose(event)
    p = pld.PLDAccountant()
    p.compose(event)
    return float(r.get_epsilon(delta)), float(p.get_epsilon(delta))


def test_the_issue_case_is_dp_accounting_and_reports_the_smaller() -> None:
    # Noise 0.5, q = 0.1, 100 rounds: the hand-written accountant said 54.4.
    assert DPFedAvg().delta == DELTA
    spent = PrivacyAccountant(0.5, 0.1).spent(100, DELTA)
    ref_rdp, ref_pld = reference(0.5, 0.1, 100, DELTA)
    assert spent.epsilon_rdp == ref_rdp and spent.epsilon_pld == ref_pld
    assert ref_rdp == pytest.approx(37.0, abs=0.05) and ref_pld == pytest.approx(31.4, abs=0.05)
    assert spent.epsilon == min(ref_rdp, ref_pld) == ref_pld and spent.tightest == "pld"


def test_every_client_every_round_is_plain_composition() -> None:
    acc = PrivacyAccountant(1.0, 1.0)
    spent = acc.spent(3, DELTA)
    assert (spent.epsilon_rdp, spent.epsilon_pld) == reference(1.0, 1.0, 3, DELTA)
    # Three Gaussian mechanisms of multiplier z compose to one of multiplier z / sqrt(3) (exactly).
    one = PrivacyAccountant(1.0 / math.sqrt(3)).spent(1, DELTA)
    assert spent.epsilon_rdp == pytest.approx(one.epsilon_rdp, rel=1e-9)
    assert spent.epsilon_pld == pytest.approx(one.epsilon_pld, rel=1e-6)
    assert spent.epsilon == min(spent.epsilon_rdp, spent.epsilon_pld)


def test_epsilon_is_monotone_in_rounds_and_noise() -> None:
    for q in (1.0, 0.05):
        acc = PrivacyAccountant(1.1, q)
        for get in (acc.epsilon, acc.epsilon_rdp, acc.epsilon_pld):
            eps = [get(t, DELTA) for t in (0, 1, 5, 30)]
            assert eps[0] == 0.0 and eps == sorted(eps) and len(set(eps)) == 4
        by_noise = [PrivacyAccountant(z, q).epsilon(5, DELTA) for z in (1.0, 2.0, 4.0, 8.0)]
        assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4


def test_sampling_amplifies_privacy() -> None:
    assert PrivacyAccountant(1.0, 0.1).epsilon(10, DELTA) < PrivacyAccountant(1.0).epsilon(10, DELTA)
    assert PrivacyAccountant(1.0, 0.0).epsilon(10, DELTA) == 0.0


def test_results_are_cached_per_rounds_and_delta() -> None:
    acc = PrivacyAccountant(2.0, 0.2)
    a = acc.spent(5, DELTA)
    assert acc.spent(5, DELTA) is a
    assert acc.spent(5, 1e-3) is not a and acc.epsilon(5, 1e-3) < a.epsilon


def test_no_noise_means_no_privacy() -> None:
    assert PrivacyAccountant(0.0).epsilon(1, DELTA) == math.inf
    assert PrivacyAccountant(0.0, 0.5).epsilon(1, DELTA) == math.inf


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant(1.0).epsilon(1, 0.0)
    with pytest.raises(ValueError, match="sample rate"):
        PrivacyAccountant(1.0, 1.5)
    with pytest.raises(ValueError, match="noise"):
        PrivacyAccountant(-1.0)


def test_the_former_name_still_works_and_says_poisson() -> None:
    assert RdpAccountant is PrivacyAccountant
    assert PrivacyAccountant(1.0, 0.1).sampling == "poisson"
