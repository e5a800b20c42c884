"""DP-FedAvg over combiners: every combiner gets every round's TRAIN and draws its own clients by
Poisson sampling at the strategy's rate; the coordinator divides by the clients aggregated across
combiners and adds the noise once; a round whose draws were all empty still counts for the
accountant, whose epsilon is then a flat session's for the same noise, rate and rounds."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from memory_hierarchy import memory_hierarchy

from fakes import ShiftTrainer
from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params
from fedhive.errors import ConfigError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.collect import Collector, CollectSettings
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.hosted import HostDirectory
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.partials import nobody_drawn_message
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation
from fedhive.strategies.dp_fedavg import DPFedAvg
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.privacy_accountant import PrivacyAccountant
from fedhive.strategies.sampling import poisson_sample, secret_draw_rng
from fedhive.transports.memory import MemoryNetwork

# Generous liveness: the PLD accountant takes a second or more per round on a loaded machine,
# and clients that their combiner's draw leaves out must stay ONLINE meanwhile.
LIVE = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 10.0}
DP_SEED = 20240519  # with seed 13, both combiners draw someone in every round (test_the_coordinator_averages...)


class DeltaTrainer(ShiftTrainer):
    """Moves the model by a fixed delta of its own and records the rounds it trained in."""

    def __init__(self, delta: np.ndarray) -> None:
        super().__init__(0.0, 10, size=delta.size - 1)
        self.delta = delta.astype(np.float32)
        self.rounds: list[int] = []

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.rounds.append(config.round)
        out = Params({"w": params["w"] + self.delta[:-1], "b": params["b"] + self.delta[-1:]})
        return FitResult(out, self.num_examples, {"loss": 1.0})


def trainers(n: int) -> list[DeltaTrainer]:
    """Deltas of norms 0.3 to 3: some within the clip norm (1), some scaled down to it."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        d = rng.normal(size=4)
        out.append(DeltaTrainer(d / np.linalg.norm(d) * (0.3 + 2.7 * i / max(1, n - 1))))
    return out


def dp_config(*, rounds: int, clients: int, noise: float, rate: float, seed: int) -> SessionConfig:
    strategy = f"dp-fedavg:clip=1.0,noise={noise},delta=1e-5,sample_rate={rate},seed={DP_SEED}"
    return SessionConfig(
        rounds=rounds, min_clients=clients, round_timeout_s=20.0, quorum=0.01, seed=seed, strategy=strategy, **LIVE
    )


@dataclass
class Run:
    result: SessionResult
    assigned: dict[str, str]  # client -> combiner
    strategy: DPFedAvg
    trainers: list[DeltaTrainer]
    started: list[ev.RoundStarted] = field(default_factory=list)
    completed: list[ev.RoundCompleted] = field(default_factory=list)

    def included(self) -> dict[int, set[str]]:
        """Round -> the clients that trained in it (every round, empty ones included)."""
        out: dict[int, set[str]] = {r: set() for r in range(1, self.result.rounds + 1)}
        for i, t in enumerate(self.trainers):
            for r in t.rounds:
                out[r].add(f"client-{i}")
        return out

    def groups(self) -> dict[str, list[str]]:
        """Combiner -> its clients, sorted (the order its draw goes in)."""
        out: dict[str, list[str]] = {}
        for client, combiner in sorted(self.assigned.items()):
            out.setdefault(combiner, []).append(client)
        return out


async def hierarchical(config: SessionConfig, ts: list[DeltaTrainer], *, combiners: int = 2) -> Run:
    built = memory_hierarchy(
        config,
        ts,
        combiners=combiners,
        combiner_options={"upstream_timeout_s": 60.0, "exact_partials": True, **LIVE},
        client_options={
            "combiner_timeout_s": 30.0,
            "register_retry_s": 0.05,
            "heartbeat_interval_s": LIVE["heartbeat_interval_s"],
        },
    )
    coordinator, nodes, clients = built.coordinator, built.combiners, built.clients
    strategy = coordinator.coordinator.strategy
    assert isinstance(strategy, DPFedAvg)
    run = Run(SessionResult("", Params(), 0, []), {}, strategy, ts)
    coordinator.bus.on(ev.RoundStarted, run.started.append)
    coordinator.bus.on(ev.RoundCompleted, run.completed.append)
    async with asyncio.timeout(180):
        tasks = [asyncio.create_task(c.run()) for c in nodes] + [asyncio.create_task(c) for c in clients]
        run.result = await coordinator.run()
        await asyncio.gather(*tasks, return_exceptions=True)  # all end on the STOP they were sent
    run.assigned = dict(coordinator.assigned)
    return run


def predicted(run: Run, config: SessionConfig, rate: float) -> dict[int, set[str]]:
    """What each combiner's Poisson draw, from its own stream under the DP seed, takes in each round."""
    out: dict[int, set[str]] = {}
    for rnd in range(1, config.rounds + 1):
        out[rnd] = set()
        for combiner, clients in run.groups().items():
            out[rnd] |= set(poisson_sample(clients, rate, secret_draw_rng(DP_SEED, rnd, 0, combiner)))
    return out


def tolerance(p: float, n: int) -> float:
    """4.5 standard deviations of a rate estimated from ``n`` Bernoulli(``p``) trials."""
    return 4.5 * math.sqrt(p * (1 - p) / n)


async def test_every_combiner_trains_each_round_and_draws_its_clients_independently_at_rate_q() -> None:
    rate, rounds, n = 0.5, 80, 8
    config = dp_config(rounds=rounds, clients=n, noise=0.0, rate=rate, seed=3)  # no noise: no accountant cost
    run = await hierarchical(config, trainers(n))
    assert run.result.rounds == rounds
    assert [sorted(e.selected) for e in run.started] == [["combiner-0", "combiner-1"]] * rounds
    included = run.included()
    assert [e.num_updates for e in run.completed] == [len(included[r]) for r in range(1, rounds + 1)]
    # Inclusion rate per client, and pooled.
    taken = np.array([[f"client-{i}" in included[r] for i in range(n)] for r in range(1, rounds + 1)], np.float64)
    assert np.abs(taken.mean(axis=0) - rate).max() < tolerance(rate, rounds)
    assert abs(taken.mean() - rate) < tolerance(rate, rounds * n)
    # Clients in the same place of two combiners' sorted lists took the same uniform number when
    # combiners shared one stream (joint rate q); independent draws give q^2.
    groups = list(run.groups().values())
    assert [len(g) for g in groups] == [4, 4]
    pairs = [(a, b) for a, b in zip(*groups, strict=True)]
    both = [a in included[r] and b in included[r] for r in range(1, rounds + 1) for a, b in pairs]
    assert abs(np.mean(both) - rate**2) < tolerance(rate**2, len(both))
    assert included == predicted(run, config, rate)  # each combiner's own stream, nothing else


async def test_a_round_whose_draws_were_all_empty_counts_and_epsilon_equals_the_flat_sessions() -> None:
    noise, rate, rounds, n = 5.0, 0.1, 5, 4
    config = dp_config(rounds=rounds, clients=n, noise=noise, rate=rate, seed=2)
    run = await hierarchical(config, trainers(n))
    included = run.included()
    assert included == predicted(run, config, rate)
    empty = [r for r in included if not included[r]]
    assert empty and len(empty) < rounds, "seed 2 must give both all-empty rounds and others"
    assert run.result.rounds == rounds and len(run.completed) == rounds
    for r in empty:  # answered by every combiner ("none"), counted, and the model stayed
        e = run.completed[r - 1]
        before = run.completed[r - 2].params if r > 1 else run.trainers[0].initial_params(0)
        assert e.num_updates == 0 and all((e.params[k] == before[k]).all() for k in before)
    assert run.strategy.rounds == rounds
    expected = PrivacyAccountant(noise, rate).epsilon(rounds, 1e-5)
    assert run.result.metrics["epsilon"] == expected
    flat = await run_federation(config, trainers(n), [10] * n, trainers(n)[0].initial_params(0))
    assert flat.rounds == rounds and flat.metrics["epsilon"] == run.result.metrics["epsilon"]


def clipped_mean_plus_noise(before: Params, taken: list[DeltaTrainer], rnd: int, noise: float) -> Params:
    """DP-FedAvg's round on the coordinator, written out: each client's delta (as its float32
    model carries it) clipped to norm 1, their mean over every client taken, and one Gaussian draw
    of std noise / n per coordinate from the strategy's seed."""
    deltas = []
    for t in taken:
        after = {"w": before["w"] + t.delta[:-1], "b": before["b"] + t.delta[-1:]}
        d = {k: after[k].astype(np.float64) - before[k].astype(np.float64) for k in before}
        norm = math.sqrt(sum(float(v @ v) for v in d.values()))
        deltas.append({k: v * min(1.0, 1.0 / norm) for k, v in d.items()})
    rng = np.random.default_rng(np.random.SeedSequence(DP_SEED, spawn_key=(rnd,)))
    out = {}
    for k, g in before.items():
        mean = g.astype(np.float64) + sum(d[k] for d in deltas) / len(taken)
        out[k] = (mean + rng.normal(0.0, noise / len(taken), g.shape)).astype(g.dtype)
    return Params(out)


async def test_the_coordinator_averages_clipped_updates_over_all_combiners_and_adds_noise_once() -> None:
    noise, rate, rounds, n = 8.0, 0.5, 3, 6
    config = dp_config(rounds=rounds, clients=n, noise=noise, rate=rate, seed=13)
    run = await hierarchical(config, trainers(n))
    included = run.included()
    assert all(len({run.assigned[c] for c in included[r]}) == 2 for r in included), "seed 13: both combiners draw"
    before = run.trainers[0].initial_params(0)
    for r in range(1, rounds + 1):
        taken = [t for i, t in enumerate(run.trainers) if f"client-{i}" in included[r]]
        expected = clipped_mean_plus_noise(before, taken, r, noise)
        got = run.completed[r - 1].params
        for k in before:  # noise of std >= 1 per coordinate: a second draw anywhere would show
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-5)
        before = got
    # The same seeds give the same session, bit for bit.
    again = await hierarchical(config, trainers(n))
    assert again.included() == included
    assert all((again.result.params[k] == run.result.params[k]).all() for k in run.result.params)


def test_a_coordinator_strategy_unlike_the_combiners_is_refused_in_one_line() -> None:
    config = SessionConfig(min_clients=2, strategy="fedavg")
    with pytest.raises(ConfigError, match="combiners clip and sample clients by the session's strategy 'fedavg'"):
        HierarchicalCoordinator(
            config, MemoryNetwork().connect(COORDINATOR_ID), trainers(1)[0].initial_params(0),
            strategy=DPFedAvg(sample_rate=0.5),
        )  # fmt: skip


async def test_a_combiner_may_answer_none_only_where_combiners_draw_their_clients() -> None:
    params = trainers(1)[0].initial_params(0)
    collector = Collector(EventBus(), InlineExecutor(), HostDirectory())
    settings = CollectSettings(params.spec, 10**6)
    r = collector.open(RoundState(1, 0, ["combiner-0"], 0.0, FedAvg().aggregator(params)), params)
    empty = nobody_drawn_message("combiner-0", "s", 1, 0)
    with pytest.raises(ProtocolError, match="it was to train all of its clients"):
        await collector.on_combiner_partial(empty, settings, lambda _s, _c: True)
    assert not r.accepted
    await collector.on_combiner_partial(empty, settings, lambda _s, _c: True, combiners_draw=True)
    assert r.accepted == {"combiner-0"} and r.done.is_set() and r.aggregator.count == 0
