"""Each combiner of a hierarchical DP session draws its own clients by Poisson sampling, from a
uniform stream of its own (``strategies.sampling.draw_rng``), so that every client's inclusion is
independent of every other's; a flat coordinator's stream is the one it always had.

These tests draw with the combiners' real ``Downstream.select`` thousands of times; the session
itself is exercised in ``test_hierarchical_dp.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedhive.runtime.bus import EventBus
from fedhive.runtime.downstream import COORDINATOR_ID, Downstream
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.sampling import POISSON, ClientSampling, draw_rng, poisson_sample
from fedhive.transports.memory import MemoryNetwork

SEED, Q, ROUNDS = 11, 0.3, 4000
GROUPS = {f"combiner-{k}": [f"client-{i}" for i in range(k, 8, 2)] for k in range(2)}  # four clients each


def node(name: str, clients: list[str]) -> Downstream:
    """A node's downstream with ``clients`` registered, ONLINE and in the session."""
    config = SessionConfig(min_clients=1, seed=SEED)
    down = Downstream(config, MemoryNetwork().connect(name), EventBus(), InlineExecutor(), sender_id=name)
    for c in clients:
        down.registry.register(c, 10)
        down.members.append(c)
    return down


def draws(down: Downstream, rounds: int = ROUNDS) -> np.ndarray:
    """``rounds`` x clients (sorted) of 0/1: who each round's draw took."""
    sampling = ClientSampling(POISSON, Q)
    clients = sorted(down.members)
    out = np.zeros((rounds, len(clients)), np.int8)
    for rnd in range(1, rounds + 1):
        chosen = down.select(rnd, 0, sampling)
        assert isinstance(chosen, list)
        out[rnd - 1] = [c in chosen for c in clients]
    return out


def tolerance(p: float, n: int) -> float:
    """Five standard deviations of a rate estimated from ``n`` Bernoulli(``p``) trials."""
    return 5 * math.sqrt(p * (1 - p) / n)


def worst_joint_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |P(both in) - q^2| over every pair of a client of ``a`` and one of ``b``."""
    joint = (a.T.astype(np.float64) @ b) / len(a)  # [i, j]: rate at which a's i and b's j both took part
    return float(np.abs(joint - Q * Q).max())


def test_every_client_is_drawn_at_rate_q() -> None:
    for name, clients in GROUPS.items():
        rates = draws(node(name, clients)).mean(axis=0)
        assert np.abs(rates - Q).max() < tolerance(Q, ROUNDS), (name, rates)


def test_clients_of_two_combiners_are_drawn_independently() -> None:
    a, b = (draws(node(name, clients)) for name, clients in GROUPS.items())
    assert worst_joint_gap(a, b) < tolerance(Q * Q, ROUNDS)
    # The same check on draws that share one stream, as combiners did before each had its own:
    # the i-th client of each combiner takes part together or not at all (joint rate q, not q^2).
    shared = [
        np.array([[c in poisson_sample(cs, Q, draw_rng(SEED, rnd, 0)) for c in cs] for rnd in range(1, ROUNDS + 1)])
        for cs in GROUPS.values()
    ]
    assert worst_joint_gap(*shared) > Q - Q * Q - tolerance(Q, ROUNDS)


def test_clients_of_one_combiner_are_drawn_independently() -> None:
    a = draws(node("combiner-0", GROUPS["combiner-0"]))
    joint = (a.T.astype(np.float64) @ a) / len(a)
    off_diagonal = joint[~np.eye(len(joint), dtype=bool)]
    assert np.abs(off_diagonal - Q * Q).max() < tolerance(Q * Q, ROUNDS)


def test_a_flat_coordinator_draws_from_the_stream_it_always_had() -> None:
    clients = sorted(GROUPS["combiner-0"] + GROUPS["combiner-1"])
    coordinator = node(COORDINATOR_ID, clients)
    for rnd, attempt in [(1, 0), (2, 0), (2, 1), (9, 3)]:
        old = poisson_sample(clients, Q, np.random.default_rng([SEED, rnd, attempt]))
        assert coordinator.select(rnd, attempt, ClientSampling(POISSON, Q)) == old


def test_a_combiners_draw_is_a_function_of_seed_round_attempt_and_its_id() -> None:
    def one(seed: int, rnd: int, attempt: int, name: str) -> list[float]:
        return draw_rng(seed, rnd, attempt, name).random(4).tolist()

    assert one(SEED, 3, 0, "combiner-0") == one(SEED, 3, 0, "combiner-0")  # same in every process
    others = [one(SEED + 1, 3, 0, "combiner-0"), one(SEED, 4, 0, "combiner-0"), one(SEED, 3, 1, "combiner-0")]
    others += [one(SEED, 3, 0, "combiner-1"), draw_rng(SEED, 3, 0).random(4).tolist()]
    assert all(o != one(SEED, 3, 0, "combiner-0") for o in others)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_edge_rates_draw_nobody_or_everyone_at_a_combiner(rate: float) -> None:
    down = node("combiner-0", GROUPS["combiner-0"])
    chosen = down.select(1, 0, ClientSampling(POISSON, rate))
    assert chosen == ([] if rate == 0 else GROUPS["combiner-0"])
