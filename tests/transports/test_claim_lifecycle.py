"""Claim checks do not pile up: a session over RabbitMQ whose models travel by reference leaves in
the store only the coordinator's latest broadcasts; every update went back (as a spare file that
later uploads reuse)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from test_amqp import SECRETS, Broker

from fakes import ShiftTrainer
from fedhive.core.signing import Verifier
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.session_config import SessionConfig
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.wire_codec import WireCodec, claims_store

pytestmark = pytest.mark.amqp

CLIENTS = ("alice", "bob")
SIZE = 50_000  # float32: 200 KB per model, over the 1 KiB claim-check threshold used here
KEYS = {name: SECRETS[name] for name in CLIENTS}


@pytest.fixture
async def broker(rabbitmq_url: str) -> AsyncIterator[Broker]:
    b = Broker(rabbitmq_url)
    yield b
    await b.teardown()


def artifact_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and ".spare" not in p.parts]


async def run_session(broker: Broker, store: LocalArtifactStore, *, rounds: int, retain_s: float) -> Coordinator:
    config = SessionConfig(rounds=rounds, min_clients=len(CLIENTS), round_timeout_s=20, registration_timeout_s=20)
    coordinator_codec = WireCodec(
        lambda to: KEYS.get(to),
        Verifier(KEYS.get),
        store,
        claim_check_bytes=1024,
        defer_references=True,
        retain_own_claims_s=retain_s,
    )
    transport = await broker.node(COORDINATOR_ID, coordinator_codec)
    trainers = [ShiftTrainer(1.0 + i, size=SIZE) for i in range(len(CLIENTS))]
    coordinator = Coordinator(config, transport, trainers[0].initial_params(0))
    clients = []
    for name, trainer in zip(CLIENTS, trainers, strict=True):
        key = SECRETS[name]
        # One secret per client, shared with the coordinator: it signs both ways.
        codec = WireCodec(lambda _to, key=key: key, Verifier({COORDINATOR_ID: key}.get), store, claim_check_bytes=1024)
        node = ClientNode(name, await broker.node(name, codec), lambda _c, t=trainer: t, num_examples=10)
        clients.append(asyncio.create_task(node.run()))
    async with asyncio.timeout(60):
        result = await coordinator.run()
        await asyncio.gather(*clients)
    assert result.rounds == rounds
    # FedAvg of +1 and +2 with equal weights: +1.5 per round
    np.testing.assert_allclose(result.params["w"], 1.5 * rounds)
    return coordinator


async def test_updates_go_back_to_the_store_and_their_files_are_reused(broker: Broker, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    await run_session(broker, store, rounds=4, retain_s=3600)
    claims = claims_root(tmp_path, broker)
    # Left: the 4 global models the coordinator broadcast (kept for an hour), no client update.
    # The last round's claims are given back in the aggregation thread, which has no event to
    # wait on: its files are watched, up to a deadline a loaded machine keeps (not a fixed pause).
    await files_left(claims, 4, deadline_s=30)
    assert artifact_files(tmp_path) == artifact_files(claims)  # claim checks live in their own area
    # 8 updates were given back; uploads after the first round wrote into spares (not new
    # files), so about one round's worth is left over.
    spares = list((claims / ".spare").iterdir())
    assert 1 <= len(spares) <= len(CLIENTS) + 1


async def test_old_broadcasts_are_deleted_after_the_retention(broker: Broker, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    await run_session(broker, store, rounds=3, retain_s=0.0)
    # Each broadcast deleted the earlier ones: only the last global model is left, once the last
    # round's update claims are given back (in the aggregation thread: watched, with a deadline).
    await files_left(claims_root(tmp_path, broker), 1, deadline_s=30)


async def files_left(root: Path, count: int, *, deadline_s: float) -> None:
    """Until ``root`` holds ``count`` artifact files; fails naming what is left after the deadline."""
    end = time.monotonic() + deadline_s
    while len(left := artifact_files(root)) != count:
        assert time.monotonic() < end, f"{len(left)} artifact files, not {count}, {deadline_s:.0f} s after the session"
        await asyncio.sleep(0.05)


def claims_root(root: Path, broker: Broker) -> Path:
    store = claims_store(LocalArtifactStore(root), broker.namespace)
    assert isinstance(store, LocalArtifactStore)
    return store.root


async def test_a_starting_coordinator_sweeps_what_a_crashed_one_left(broker: Broker, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    area = claims_store(store, broker.namespace)
    left, recent = area.put(b"a global model of a crashed coordinator"), area.put(b"an update sent a moment ago")
    hours_ago = time.time() - 7200
    path = claims_root(tmp_path, broker) / left[7:9] / left[9:]
    os.utime(path, (hours_ago, hours_ago))
    codec = WireCodec(lambda to: KEYS.get(to), Verifier(KEYS.get), store, defer_references=True)
    await broker.node(COORDINATOR_ID, codec)
    assert not area.exists(left) and area.exists(recent)
