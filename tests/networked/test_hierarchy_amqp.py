"""Hierarchical federation over RabbitMQ: 1 coordinator, 2 combiners, 6 clients, real signatures.

The nodes run in this process (the coordinator command has no hierarchical mode yet), each with
its own AMQP connection, codec and identity, exactly as separate processes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
from amqp_cluster import session_toml

from fedhive.app.loader import BUILTIN
from fedhive.cli.session_file import load_session_file
from fedhive.cli.site_options import build_site, plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.hierarchy_networked import run_combiner, run_hierarchical_client, run_hierarchical_coordinator
from fedhive.runtime.networked import BrokerSettings, ClientSettings
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.simulation import run_federation
from fedhive.transports.amqp import delete_namespace

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

N_CLIENTS = 6


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "clients.json")


@pytest.fixture
async def broker(rabbitmq_url: str, store: CredentialStore) -> AsyncIterator[BrokerSettings]:
    settings = BrokerSettings(rabbitmq_url, f"test-{uuid4().hex[:8]}")
    yield settings
    ids = {COORDINATOR_ID, *(c.client_id for c in store.list())}
    await delete_namespace(rabbitmq_url, settings.namespace, ids)


async def run_all(
    session: SessionFile, store: CredentialStore, broker: BrokerSettings, kill: bool
) -> tuple[SessionResult, list[ev.RoundCompleted]]:
    idents = {cid: parse_secret(secret) for cid, secret in (store.add(n) for n in ["comb1", "comb2"])}
    clients = [store.add(f"cl{i}") for i in range(1, N_CLIENTS + 1)]
    # The clients' own coordinator timeout is the default (60 s): they give a combiner up after
    # the heartbeat timeout it announces (6 s here), so the killed one's clients move in seconds.
    # Not 2 s: coordinator, combiners and clients share this process and two cores; 2 s left no
    # room for a stall on a loaded machine.
    options = ClientSettings(register_timeout_s=60)
    combiners = {
        cid: asyncio.create_task(
            run_combiner(cid, key, store, broker, heartbeat_interval_s=0.5, heartbeat_timeout_s=6.0)
        )
        for cid, key in idents.items()
    }
    client_tasks = [
        asyncio.create_task(
            run_hierarchical_client(
                parse_secret(secret),
                build_site(
                    cid, BUILTIN, None, LocalData(dataset="digits", partition="dirichlet:0.5", part=f"{i}/{N_CLIENTS}")
                ),
                broker,
                options,
            )
        )
        for i, (cid, secret) in enumerate(clients, start=1)
    ]

    done: list[ev.RoundCompleted] = []

    def kill_after_round_1(bus: object) -> None:
        def on_round(e: ev.RoundCompleted) -> None:
            done.append(e)
            if e.round == 1 and kill:
                next(iter(combiners.values())).cancel()  # its connection drops: no goodbye, as in a crash

        assert hasattr(bus, "on")
        bus.on(ev.RoundCompleted, on_round)

    async with asyncio.timeout(150):
        result = await run_hierarchical_coordinator(
            session, store, broker, min_combiners=2, observers=[kill_after_round_1]
        )
        await asyncio.gather(*client_tasks)
        await asyncio.gather(*combiners.values(), return_exceptions=True)
    return result, done


async def flat_accuracy(session: SessionFile) -> float:
    plan = plan_builtin(session.config, DataSpec(dataset="digits", partition="dirichlet:0.5"), N_CLIENTS)
    result = await run_federation(
        plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator
    )
    return result.metrics["accuracy"]


async def test_nested_run_reaches_the_flat_accuracy(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path
) -> None:
    session = load_session_file(session_toml(tmp_path / "s.toml", rounds=4, min_clients=N_CLIENTS))
    result, _ = await run_all(session, store, broker, kill=False)
    assert result.rounds == 4
    assert abs(result.metrics["accuracy"] - await flat_accuracy(session)) <= 0.01


async def test_a_killed_combiners_clients_move_and_the_session_completes(
    broker: BrokerSettings, store: CredentialStore, tmp_path: Path
) -> None:
    session = load_session_file(session_toml(tmp_path / "s.toml", rounds=8, min_clients=N_CLIENTS))
    result, done = await run_all(session, store, broker, kill=True)
    assert result.rounds == 8
    assert done[1].num_selected == 2 and done[1].num_updates == 3  # the dead combiner is missed once
    assert done[-1].num_selected == 1 and done[-1].num_updates == N_CLIENTS  # its clients moved
