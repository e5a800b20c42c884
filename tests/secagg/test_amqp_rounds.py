"""Secure aggregation over RabbitMQ with the nodes in this process (to watch their buses and to
make a client vanish at an exact step): the messages of a round (keys advertised ahead from the
second round on), a client gone after its masked input, combiners that each sum their own group.

Every node has its own AMQP connection, codec and identity, as separate processes would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from amqp_cluster import session_toml

from fedhive.app.loader import BUILTIN
from fedhive.cli.session_file import load_session_file
from fedhive.cli.site_options import build_site, plan_builtin
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.hierarchy_networked import run_combiner, run_hierarchical_client, run_hierarchical_coordinator
from fedhive.runtime.networked import BrokerSettings, ClientSettings, client_codec, run_client, run_coordinator
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.simulation import run_federation
from fedhive.transports.amqp import delete_namespace
from fedhive.transports.base import Transport, TransportWrapper

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

BOUND = 1e-6  # three rounds of the 2**-29 fixed-point bound, each cast to float32: far above both


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "clients.json")


@pytest.fixture
async def broker(rabbitmq_url: str, store: CredentialStore) -> AsyncIterator[BrokerSettings]:
    settings = BrokerSettings(rabbitmq_url, f"test-{uuid4().hex[:8]}")
    yield settings
    await delete_namespace(rabbitmq_url, settings.namespace, {COORDINATOR_ID, *(c.client_id for c in store.list())})


def session(tmp_path: Path, clients: int, **settings: object) -> SessionFile:
    # Full-batch training: each client's update does not depend on its seed, so the model does
    # not depend on which combiner a client lands with (its seed follows its place there).
    values = {"rounds": 3, "min_clients": clients, "batch_size": 4096, "secure_aggregation": True, **settings}
    return load_session_file(session_toml(tmp_path / "s.toml", **values))  # type: ignore[arg-type]


def part(cid: str, i: int, n: int) -> LocalData:
    return LocalData(dataset="digits", partition="dirichlet:0.5", part=f"{i}/{n}")


async def plain_fedavg(s: SessionFile, clients: int, rounds: int = 3) -> Params:
    config = s.config.model_copy(update={"secure_aggregation": False, "rounds": rounds})
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="dirichlet:0.5"), clients)
    result = await run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params)
    return result.params


def max_diff(a: Params, b: Params) -> float:
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) for n in a)


class GoneAfter(TransportWrapper):
    """A client that vanishes right after its ``step`` of ``round`` is out (``secagg.wire``'s
    names): nothing it would send later leaves, and its node is stopped, as a crash would."""

    def __init__(self, inner: Transport, round: int, step: str) -> None:
        super().__init__(inner)
        self.round, self.step = round, step
        self.gone = asyncio.Event()

    async def send(self, to: str, message: Message) -> None:
        if self.gone.is_set():
            return
        await self.inner.send(to, message)
        body = message.envelope.body
        if message.kind is Kind.UPDATE and body.get("secagg") == self.step and message.envelope.round == self.round:
            self.gone.set()


async def vanishing_client(
    key: bytes, cid: str, data: LocalData, broker: BrokerSettings, round: int, step: str
) -> None:
    site = build_site(cid, BUILTIN, None, data)
    async with broker.transport(cid, client_codec(cid, key), declares=False) as inner:
        link = GoneAfter(inner, round, step)
        node = ClientNode(cid, link, site.trainer_for, num_examples=site.num_examples, register_timeout_s=30)
        serving = asyncio.create_task(node.run())
        await link.gone.wait()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


class SentSteps(TransportWrapper):
    """Which secure-aggregation steps a client sends, per round, in order."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.sent: dict[int, list[str]] = {}

    async def send(self, to: str, message: Message) -> None:
        if message.kind is Kind.UPDATE:
            self.sent.setdefault(message.envelope.round, []).append(str(message.envelope.body.get("secagg")))
        await self.inner.send(to, message)


async def test_from_the_second_round_a_round_is_three_exchanges_after_the_train(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path
) -> None:
    n = 4
    s = session(tmp_path, n)
    idents = [(cid, parse_secret(secret)) for cid, secret in (store.add(f"c{i}") for i in range(1, n + 1))]
    links: dict[str, SentSteps] = {}
    trains: dict[str, list[int]] = {}  # each client's TRAINs, by round
    ready = asyncio.Event()

    async def client(i: int, cid: str, key: bytes) -> None:
        site = build_site(cid, BUILTIN, None, part(cid, i, n))
        async with broker.transport(cid, client_codec(cid, key), declares=False) as inner:
            links[cid] = link = SentSteps(inner)
            node = ClientNode(cid, link, site.trainer_for, num_examples=site.num_examples, register_timeout_s=30)

            def got(e: ev.MessageIn) -> None:
                if e.message.kind is Kind.TRAIN:
                    trains.setdefault(cid, []).append(e.message.envelope.round)

            node.bus.on(ev.MessageIn, got)
            await node.run()

    async with asyncio.timeout(150):
        coordinator = asyncio.create_task(run_coordinator(s, store, broker, on_ready=ready.set))
        await ready.wait()
        clients = [asyncio.create_task(client(i, cid, key)) for i, (cid, key) in enumerate(idents, start=1)]
        result = await coordinator
        await asyncio.gather(*clients)
    assert result.rounds == 3
    for cid, link in links.items():
        # Round 1 exchanges keys first; then each masked input brings the next round's keys, and
        # the round's TRAIN brings the roster: 6 messages a client instead of 8.
        assert link.sent[1] == ["keys", "shares", "masked", "unmask"], cid
        assert link.sent[2] == link.sent[3] == ["shares", "masked", "unmask"], cid
        assert [trains[cid].count(r) for r in (1, 2, 3)] == [4, 3, 3], cid
    diff = max_diff(result.params, await plain_fedavg(s, n))
    print(f"keys advertised ahead, after 3 rounds: max |secure - plain FedAvg| {diff:.3g}")
    assert diff <= BOUND


async def test_a_client_gone_after_its_masked_input_stays_in_the_sum(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path
) -> None:
    n = 5
    # 8 s: the gone client is still noticed within the test, and 3 s left honest ones, training in
    # this process on a loaded 2-core machine, no room for a stall.
    s = session(tmp_path, n, min_round_clients=3, heartbeat_interval_s=0.5, heartbeat_timeout_s=8.0)
    idents = [(cid, parse_secret(secret)) for cid, secret in (store.add(f"c{i}") for i in range(1, n + 1))]
    done: list[ev.RoundCompleted] = []
    ready = asyncio.Event()

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, done.append)

    async with asyncio.timeout(150):
        coordinator = asyncio.create_task(run_coordinator(s, store, broker, observers=[watch], on_ready=ready.set))
        await ready.wait()
        settings = ClientSettings(register_timeout_s=30)
        honest = [
            asyncio.create_task(run_client(key, build_site(cid, BUILTIN, None, part(cid, i, n)), broker, settings))
            for i, (cid, key) in enumerate(idents[:-1], start=1)
        ]
        last, key = idents[-1]
        gone = asyncio.create_task(vanishing_client(key, last, part(last, n, n), broker, 2, "masked"))
        result = await coordinator
        await asyncio.gather(*honest, gone)
    assert result.rounds == 3
    assert [(d.round, d.num_updates) for d in done][:2] == [(1, 5), (2, 5)]  # its update counted in round 2
    assert done[2].num_updates == 4  # then it is gone
    # Its self mask was rebuilt from its neighbours' shares: round 2's model is plain FedAvg's.
    diff = max_diff(done[1].params, await plain_fedavg(s, n, rounds=2))
    print(f"round 2, {last} gone before unmasking: max |secure - plain FedAvg| {diff:.3g}")
    assert diff <= BOUND


async def test_each_combiner_sums_its_group_securely(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedhive.secagg")
    n = 6
    s = session(tmp_path, n)
    combiners = {cid: parse_secret(secret) for cid, secret in (store.add(c) for c in ("comb1", "comb2"))}
    clients = [store.add(f"cl{i}") for i in range(1, n + 1)]
    partials: list[ev.UpdateAccepted] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, partials.append)

    async with asyncio.timeout(150):
        tasks = [
            asyncio.create_task(run_combiner(cid, key, store, broker, heartbeat_interval_s=0.5, heartbeat_timeout_s=5))
            for cid, key in combiners.items()
        ]
        tasks += [
            asyncio.create_task(
                run_hierarchical_client(
                    parse_secret(secret),
                    build_site(cid, BUILTIN, None, part(cid, i, n)),
                    broker,
                    ClientSettings(register_timeout_s=60),
                )
            )
            for i, (cid, secret) in enumerate(clients, start=1)
        ]
        result = await run_hierarchical_coordinator(s, store, broker, min_combiners=2, observers=[watch])
        await asyncio.gather(*tasks, return_exceptions=True)
    assert result.rounds == 3
    # The coordinator hears from the two combiners only, once a round: a sum each.
    assert sorted(e.client_id for e in partials if e.round == 1) == sorted(combiners)
    # ... and each client sent a masked input every round, never its update.
    assert sum("masked input sent" in r.getMessage() for r in caplog.records) == n * 3
    diff = max_diff(result.params, await plain_fedavg(s, n))
    print(f"max |secure over combiners - plain FedAvg| after 3 rounds: {diff:.3g}")
    assert diff <= BOUND


async def test_a_client_gone_before_its_masked_input_is_left_out_and_its_masks_removed(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path
) -> None:
    n = 5
    # 8 s: the gone client is still noticed within the test, and 3 s left honest ones, training in
    # this process on a loaded 2-core machine, no room for a stall.
    s = session(tmp_path, n, min_round_clients=3, heartbeat_interval_s=0.5, heartbeat_timeout_s=8.0)
    idents = [(cid, parse_secret(secret)) for cid, secret in (store.add(f"c{i}") for i in range(1, n + 1))]
    done: list[ev.RoundCompleted] = []
    retried: list[ev.RoundRetried] = []
    ready = asyncio.Event()

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, done.append)
        bus.on(ev.RoundRetried, retried.append)

    async with asyncio.timeout(150):
        coordinator = asyncio.create_task(run_coordinator(s, store, broker, observers=[watch], on_ready=ready.set))
        await ready.wait()
        settings = ClientSettings(register_timeout_s=30)
        honest = [
            asyncio.create_task(run_client(key, build_site(cid, BUILTIN, None, part(cid, i, n)), broker, settings))
            for i, (cid, key) in enumerate(idents[:-2], start=1)
        ]
        # Round 2: one is gone once its shares are out (its neighbours mask towards it: those
        # masks must be rebuilt from its mask key), the other once its masked input is out.
        (early, early_key), (late, late_key) = idents[-2:]
        gone = [
            asyncio.create_task(vanishing_client(early_key, early, part(early, n - 1, n), broker, 2, "shares")),
            asyncio.create_task(vanishing_client(late_key, late, part(late, n, n), broker, 2, "masked")),
        ]
        result = await coordinator
        await asyncio.gather(*honest, *gone)
    assert result.rounds == 3 and not retried
    assert [d.num_updates for d in done] == [5, 4, 3]
    # A mask left in would make the model noise (or be refused as exploded): it keeps learning.
    assert done[1].metrics["accuracy"] > done[0].metrics["accuracy"] > 0.3
