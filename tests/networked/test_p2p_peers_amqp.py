"""Decentralised federation over RabbitMQ: five peer processes, no coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from amqp_peers import SETTINGS, Peers

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


async def star_accuracy(n: int, rounds: int) -> float:
    config = SessionConfig(rounds=rounds, min_clients=n, **SETTINGS)  # type: ignore[arg-type]
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="dirichlet:0.5"), n)
    result = await run_federation(
        plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator
    )
    return result.metrics["accuracy"]


def test_five_peers_hold_identical_models_and_match_the_star_topology(peers: Peers, tmp_path: Path) -> None:
    rounds = 5
    procs = peers.start(5, rounds)
    for p in procs:
        assert p.finish(timeout=120) == 0, p.tail()
    histories = [peers.rounds(p) for p in procs]
    assert all(sorted(h) == list(range(1, rounds + 1)) for h in histories)
    for r in range(1, rounds + 1):
        assert len({h[r]["digest"] for h in histories}) == 1, f"round {r}: digests differ"
        assert all(h[r]["members"] == 5 for h in histories)
    star = asyncio.run(star_accuracy(5, rounds))
    accuracy = float(histories[0][rounds]["accuracy"])  # type: ignore[arg-type]
    assert abs(accuracy - star) <= 0.01, (accuracy, star)


def test_a_killed_peer_does_not_stop_the_others(peers: Peers) -> None:
    rounds = 6
    procs = peers.start(5, rounds)
    procs[2].wait_for('"round": 2', timeout=90)
    procs[2].kill()
    survivors = [p for i, p in enumerate(procs) if i != 2]
    for p in survivors:
        assert p.finish(timeout=120) == 0, p.tail()
    histories = [peers.rounds(p) for p in survivors]
    for r in range(1, rounds + 1):
        assert len({h[r]["digest"] for h in histories}) == 1, f"round {r}: digests differ"
    assert histories[0][rounds]["members"] == 4


def test_gossiping_peers_learn_without_a_common_model(peers: Peers) -> None:
    rounds = 6
    procs = peers.start(4, rounds, "--gossip", "1")
    for p in procs:
        assert p.finish(timeout=120) == 0, p.tail()
    histories = [peers.rounds(p) for p in procs]
    # Every peer gets to the last round (one that falls two rounds behind takes a newer model from
    # another peer, skipping rounds of its own: that is how a laggard catches up).
    assert all(max(h) == rounds for h in histories)
    # Each averages its own model with those sent to it: different models, all learning (0.90-0.92
    # here after 6 rounds, the star topology 0.93 after 20).
    assert len({h[rounds]["digest"] for h in histories}) > 1
    assert all(float(h[rounds]["accuracy"]) > 0.8 for h in histories)  # type: ignore[arg-type]
