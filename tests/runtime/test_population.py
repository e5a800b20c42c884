"""A population far larger than a round: the same bits as one object per client, the same sample
for a seed, bookkeeping in columns, and clients made only while sampled."""

from __future__ import annotations

import asyncio
import tracemalloc

import numpy as np
import pytest

from fedhive.app.loader import load_app
from fedhive.core.params import Params
from fedhive.errors import ConfigError, ProtocolError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.population import Population, PopulationRegistry
from fedhive.runtime.population_simulation import plan_population, run_population
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import client_id, plan_simulation, run_federation

LINEAR = "tests/linear_app.py:app"  # each client's rows come from its partition_id and the seed


class Seen:
    def __init__(self) -> None:
        self.selected: list[list[str]] = []
        self.accepted: list[tuple[int, str]] = []
        self.started: list[ev.SessionStarted] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.RoundStarted, lambda e: self.selected.append(list(e.selected)))
        bus.on(ev.UpdateAccepted, lambda e: self.accepted.append((e.round, e.client_id)))
        bus.on(ev.SessionStarted, self.started.append)


def population_run(clients: int, seed: int = 4, **settings: object) -> tuple[Params, Seen, Population]:
    config = SessionConfig(min_clients=clients, **{"rounds": 2, "epochs": 1, "lr": 0.05, "seed": seed, **settings})
    plan = plan_population(config, load_app(LINEAR), clients, evaluate="none")
    seen = Seen()
    result = asyncio.run(run_population(plan, observers=[seen.attach]))
    return result.params, seen, plan.population


def test_a_population_gives_the_bits_of_one_client_object_each() -> None:
    # Same selection (the same draw over indices as over sorted names), the same seeds, the same
    # chunks: the same model and the same federated evaluation, bit for bit.
    config = SessionConfig(min_clients=300, rounds=3, epochs=2, lr=0.05, seed=4, fraction=0.1)
    loaded = load_app(LINEAR)
    plan = plan_simulation(config, loaded, 300, evaluate="clients")
    per_client = asyncio.run(run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params))
    population = asyncio.run(run_population(plan_population(config, loaded, 300, evaluate="clients")))
    assert population.history == per_client.history
    for name, array in per_client.params.items():
        assert np.array_equal(population.params[name], array), name


def test_the_same_seed_samples_the_same_clients_and_bits() -> None:
    a, seen_a, _ = population_run(100_000, max_clients=40)
    b, seen_b, _ = population_run(100_000, max_clients=40)
    c, seen_c, _ = population_run(100_000, seed=5, max_clients=40)
    assert seen_a.selected == seen_b.selected
    assert [len(s) for s in seen_a.selected] == [40, 40]
    assert all(s == sorted(s) for s in seen_a.selected)
    assert seen_c.selected != seen_a.selected
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_bookkeeping_is_columns_and_only_sampled_clients_are_made() -> None:
    clients = 100_000
    tracemalloc.start()
    try:
        _, seen, population = population_run(clients, rounds=3, max_clients=25)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert population.nbytes == 13 * clients  # 4 columns: uint8, int32, uint32, int32
    # Nothing else per client: one Python object per client (a name, a dict entry, a
    # registration) would cost far more than the columns themselves.
    assert peak < population.nbytes + 8 * 2**20
    assert seen.started[0].clients == [] and seen.started[0].population == clients
    trained = {c for _, c in seen.accepted}
    assert int(population.updates.sum()) == len(seen.accepted) == 75
    assert population.trained() == len(trained)
    for rnd, cid in seen.accepted:
        index = population.index_of(cid)
        assert index is not None and population.last_round[index] >= rnd
    untouched = np.ones(clients, bool)
    untouched[[population.index_of(c) for c in trained]] = False
    assert not population.updates[untouched].any() and not population.last_round[untouched].any()


def test_a_population_names_its_clients_as_the_simulation_does() -> None:
    population = Population(1_000_000)
    assert population.client_id(42) == client_id(42, 1_000_000) == "client-000042"
    assert population.index_of("client-000042") == 42
    for wrong in ("client-42", "client-1000000", "client-00004x", "client-٠٠٠٠٤٢", "host-000042"):
        assert population.index_of(wrong) is None
    picked = population.choose(5, np.random.default_rng([0, 1, 0]))
    names = [client_id(i, 1_000_000) for i in range(1_000_000)]
    drawn = sorted(np.random.default_rng([0, 1, 0]).choice(names, size=5, replace=False).tolist())
    assert population.ids(picked) == drawn  # a registry's draw over sorted names, without the names


def test_offline_clients_are_never_drawn() -> None:
    population = Population(1000)
    for i in range(0, 1000, 2):
        population.set_status(i, PeerStatus.OFFLINE)
    assert population.online_count() == 500
    picked = population.choose(100, np.random.default_rng(1))
    assert len(picked) == 100 and all(i % 2 == 1 for i in picked.tolist())
    poisson = population.poisson(0.5, np.random.default_rng(1))
    assert all(i % 2 == 1 for i in poisson.tolist())
    population.set_all(PeerStatus.TRAINING)
    assert population.online_count() == 500 and population.status[0] != population.status[1]


def test_the_registry_answers_from_the_columns() -> None:
    population = Population(50_000)
    registry = PopulationRegistry(population)
    assert "client-00007" in registry and "client-7" not in registry
    assert registry.set_status("client-00007", PeerStatus.TRAINING) is PeerStatus.ONLINE
    info = registry.get("client-00007")
    assert info is not None and info.status is PeerStatus.TRAINING
    assert registry.online_count() == 50_000
    with pytest.raises(ProtocolError, match="one of a simulated population"):
        registry.register("client-00007", 10)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"compression": "float16"}, "uncompressed"),
        ({"aggregation": "async"}, "synchronous rounds"),
        ({"fraction": 0.5}, "at most 10,000 a round"),
    ],
)
def test_sessions_a_population_cannot_run_are_refused_before_training(
    settings: dict[str, object], message: str
) -> None:
    config = SessionConfig(min_clients=100_000, **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        plan_population(config, load_app(LINEAR), 100_000, evaluate="none")
