"""DP-FedAvg's accountant assumes Poisson sampling, and the coordinator samples that way: each
client takes part in a round independently at the strategy's rate, and a round that drew nobody
still counts for the accountant (the model stays as it is)."""

from __future__ import annotations

from typing import Any

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.strategies.privacy_accountant import PrivacyAccountant
from linear_app import app, loaded


async def test_clients_are_drawn_independently_at_the_strategys_rate() -> None:
    rate, clients, rounds = 0.2, 10, 12
    strategy = f"dp-fedavg:clip=5.0,noise=0.5,delta=1e-5,sample_rate={rate}"
    config = make_config(rounds=rounds, min_clients=clients, lr=0.1, seed=4, strategy=strategy, quorum=0.01)
    plan = plan_simulation(config, loaded(app), clients, evaluate="none")
    started: list[ev.RoundStarted] = []
    done: list[Any] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundStarted, started.append)
        bus.on(ev.RoundCompleted, done.append)

    result = await run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, observers=[watch])
    sizes = [len(e.selected) for e in started]
    assert result.rounds == rounds and len(done) == rounds
    assert len(set(sizes)) > 1, sizes  # not a fixed-size sample
    assert sum(sizes) < clients * rounds  # not everyone, every round
    # The accountant counted every round, empty draws included: its epsilon is the library's.
    expected = PrivacyAccountant(0.5, rate).epsilon(rounds, 1e-5)
    assert result.metrics["epsilon"] == expected
    empty = [e.round for e in done if e.num_updates == 0]
    for rnd in empty:  # a round that drew nobody leaves the model as it was
        assert (done[rnd - 1].params["w"] == (done[rnd - 2].params["w"] if rnd > 1 else plan.initial_params["w"])).all()
