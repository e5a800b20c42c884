"""A ``ClientHost`` (many virtual clients behind one node) against one ``ClientNode`` per client:
the same selection, the same per-client events, the same model; and a node that claims to speak
for clients that did not name it gets nowhere."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from fedhive.core.envelope import Kind, make
from fedhive.core.params import Params
from fedhive.errors import SessionFailed, TransportError
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client_host import ClientHost, HostedClient, chunk_size
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.partials import partial_message
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation
from fedhive.strategies.base import Partial
from fedhive.transports.memory import MemoryNetwork


def trainers(n: int, seed: int = 0) -> list[NumpyLogRegTrainer]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 8)).astype(np.float32)
    out = []
    for i in range(n):
        y = rng.integers(0, 3, 20 + i)  # different sizes: weighting matters
        out.append(NumpyLogRegTrainer(centers[y] + rng.standard_normal((len(y), 8), dtype=np.float32), y, 3))
    return out


class Recorder:
    def __init__(self) -> None:
        self.accepted: list[tuple[int, str, int, tuple[tuple[str, float], ...]]] = []
        self.selected: list[list[str]] = []
        self.updates_per_round: list[int] = []
        self.rejected: list[str] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: self.accepted.append(
            (e.round, e.client_id, e.num_examples, tuple(sorted(e.metrics.items())))
        ))  # fmt: skip
        bus.on(ev.RoundStarted, lambda e: self.selected.append(list(e.selected)))
        bus.on(ev.RoundCompleted, lambda e: self.updates_per_round.append(e.num_updates))
        bus.on(ev.UpdateRejected, lambda e: self.rejected.append(e.reason))


async def run(config: SessionConfig, n: int, *, hosted: bool, threaded: bool = False) -> tuple[Params, Recorder]:
    rec, ts = Recorder(), trainers(n)
    async with asyncio.timeout(60):
        result = await run_federation(
            config,
            ts,
            [len(t._y) for t in ts],
            ts[0].initial_params(config.seed),
            observers=[rec.attach],
            hosted=hosted,
            threaded=threaded,
        )
    return result.params, rec


@pytest.mark.parametrize(
    ("strategy", "threaded"),
    [("fedavg", False), ("fedavg", True), ("fedprox:mu=0.1", False), ("fedadam", False), ("fedmedian", False)],
)
async def test_a_host_trains_like_one_node_per_client(strategy: str, threaded: bool) -> None:
    config = SessionConfig(rounds=3, min_clients=12, fraction=0.75, strategy=strategy, epochs=2, batch_size=8, seed=3)
    hosted, by_host = await run(config, 12, hosted=True, threaded=threaded)
    nodes, by_nodes = await run(config, 12, hosted=False, threaded=threaded)
    assert by_host.selected == by_nodes.selected and all(len(s) == 9 for s in by_host.selected)
    assert sorted(by_host.accepted) == sorted(by_nodes.accepted)  # per client: examples, metrics
    assert by_host.updates_per_round == by_nodes.updates_per_round == [9, 9, 9]
    for name in hosted:
        # Sums are grouped by chunk on a host: equal up to float64 rounding, cast to float32.
        np.testing.assert_allclose(hosted[name], nodes[name], rtol=1e-6, atol=1e-7)


async def test_the_same_seed_gives_the_same_bits_across_chunks() -> None:
    config = SessionConfig(rounds=2, min_clients=150, epochs=1, batch_size=8, seed=1)
    assert chunk_size(trainers(1)[0].initial_params(0).nbytes) < 150  # several partials per round
    first, rec = await run(config, 150, hosted=True)
    second, _ = await run(config, 150, hosted=True)
    assert all(first[n].tobytes() == second[n].tobytes() for n in first)
    assert rec.updates_per_round == [150, 150]


async def test_a_host_refuses_to_compress_and_says_why() -> None:
    config = SessionConfig(rounds=1, min_clients=3, compression="int8", max_round_retries=0)
    with pytest.raises(SessionFailed, match="does not compress updates"):
        await run(config, 3, hosted=True)
    _, rec = await run(config, 3, hosted=False)  # what simulate picks for a compressed session
    assert rec.updates_per_round == [3]


async def test_a_node_cannot_answer_for_clients_that_did_not_name_it(caplog: pytest.LogCaptureFixture) -> None:
    """'mallory' registers as a client of its own, then sends a partial that names the host's
    clients with a poisoned sum. The coordinator refuses it: the round completes at its deadline
    with the host's honest updates alone."""
    net = MemoryNetwork()
    ts = trainers(2)
    initial = ts[0].initial_params(0)
    config = SessionConfig(rounds=1, min_clients=3, round_timeout_s=1.0, quorum=0.6, heartbeat_interval_s=None)
    coordinator = Coordinator(config, net.connect(COORDINATOR_ID), initial)
    rec = Recorder()
    rec.attach(coordinator.bus)
    host = ClientHost(
        "host", net.connect("host", aliases=["a", "b"]), [HostedClient("a", ts[0], 20), HostedClient("b", ts[1], 21)]
    )
    mallory = net.connect("mallory")
    await mallory.send(COORDINATOR_ID, make(Kind.REGISTER, "mallory", body={"num_examples": 5}))

    async def attack() -> None:
        async for msg in mallory:
            if msg.kind is Kind.TRAIN:
                poison = Params({n: np.full(a.shape, 1e6) for n, a in initial.items()})
                forged = Partial(poison, 41.0, 41, 2, {}, 41.0)
                body = {"members": [{"client": c, "num_examples": 20, "metrics": {}} for c in ("a", "b")]}
                msg_out = partial_message(
                    "mallory", msg.envelope.session_id, 1, 0, forged, ["a", "b"], spec=initial.spec, exact=True
                )
                msg_out.envelope.body.update(body)
                await mallory.send(COORDINATOR_ID, msg_out)

    with caplog.at_level(logging.WARNING, logger="fedhive.coordinator"):
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            tg.create_task(host.run())
            attacker = tg.create_task(attack())
            result = await coordinator.run()
            await host.transport.close()
            await mallory.close()
            attacker.cancel()
    assert any("mallory is not the host of every client its partial names" in r.getMessage() for r in caplog.records)
    assert rec.updates_per_round == [2]
    assert sorted(c for _, c, _, _ in rec.accepted) == ["a", "b"]
    assert np.abs(result.params["weight"]).max() < 100  # the poisoned sum never reached the model


async def test_a_memory_node_answers_to_its_aliases() -> None:
    net = MemoryNetwork()
    host = net.connect("host", aliases=["c1", "c2"])
    sender = net.connect("s")
    await sender.send("c2", make(Kind.HEARTBEAT, "s"))
    assert (await host.recv()).sender == "s"
    await host.close()
    with pytest.raises(TransportError, match="no node 'c1'"):
        await sender.send("c1", make(Kind.HEARTBEAT, "s"))


class Crashing(NumpyLogRegTrainer):
    def fit(self, params, config, progress=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


async def test_a_trainer_that_raises_costs_only_its_own_update() -> None:
    ts = trainers(4)
    ts[1].__class__ = Crashing  # the same data, a trainer with a bug
    rec = Recorder()
    config = SessionConfig(rounds=2, min_clients=4, quorum=0.5)
    async with asyncio.timeout(30):
        result = await run_federation(
            config, ts, [20] * 4, ts[0].initial_params(0), observers=[rec.attach], hosted=True
        )
    assert result.rounds == 2 and rec.updates_per_round == [3, 3]
    assert rec.rejected == ["its trainer raised RuntimeError: boom"] * 2
