"""Asynchronous, buffered aggregation (runtime/async_rounds.py) on the memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fakes import BadTrainer, ShiftTrainer
from fedhive.app.loader import load_app
from fedhive.cli.session_file import parse_session
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params
from fedhive.errors import ConfigError, SessionFailed
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime import events as ev
from fedhive.runtime.async_staleness import shifted, staleness_settings, staleness_weight
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.resume import coordinator_kwargs, strategy_for
from fedhive.runtime.session_config import SessionConfig, make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.tracking.run_checkpoint import RunCheckpoint, fingerprint, load_run_checkpoint
from fedhive.transports.base import Transport, TransportWrapper
from fedhive.transports.memory import MemoryNetwork


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(object, self.events.append)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {"rounds": 6, "min_clients": 2, "round_timeout_s": 10.0, "aggregation": "async"}
    return SessionConfig(**{**base, **kw})  # type: ignore[arg-type]


async def run(config: SessionConfig, trainers: list[ShiftTrainer], rec: Recorder | None = None, **kw: object):
    kw.setdefault("observers", [rec.attach] if rec else [])
    async with asyncio.timeout(30):
        return await run_federation(
            config,
            trainers,
            [t.num_examples for t in trainers],
            trainers[0].initial_params(0),
            **kw,  # type: ignore[arg-type]
        )


# -- the arithmetic ---------------------------------------------------------------------------------
def test_staleness_weights() -> None:
    assert staleness_weight(7, "constant", 0.5) == 1.0
    assert staleness_weight(0, "polynomial", 0.5) == 1.0
    assert staleness_weight(3, "polynomial", 0.5) == pytest.approx(0.5)  # FedBuff's 1/sqrt(1+s)
    assert staleness_weight(1, "polynomial", 1.0) == pytest.approx(0.5)
    assert staleness_weight(9, "polynomial", 2.0) == pytest.approx(0.01)
    assert staleness_settings("polynomial:2") == {"staleness_weighting": "polynomial", "staleness_exponent": 2.0}
    assert staleness_settings("constant") == {"staleness_weighting": "constant"}
    with pytest.raises(ConfigError, match="constant or polynomial"):
        staleness_settings("linear")


def test_a_stale_change_is_moved_onto_the_current_model() -> None:
    base = Params({"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)})
    update = Params({"w": np.array([3.0, 0.0], np.float32), "n": np.array([5], np.int64)})
    current = Params({"w": np.array([10.0, 10.0], np.float32), "n": np.array([4], np.int64)})
    out = shifted(current, base, update, 0.25)
    np.testing.assert_array_equal(out["w"], np.array([10.5, 9.5], np.float32))  # 10 + 0.25 * (3-1, 0-2)
    assert out["w"].dtype == np.float32 and out["n"].tolist() == [5]  # a counter is the update's own


async def test_a_buffer_is_the_fedavg_of_its_changes() -> None:
    # Two clients, a buffer of two. The first version is FedAvg of two fresh updates. Then the
    # first to answer trains again at once, on version 0 still (FedBuff): with constant weighting
    # its change counts in full, so every version moves by the example-weighted mean shift.
    rec = Recorder()
    trainers = [ShiftTrainer(1.0, 10), ShiftTrainer(3.0, 30)]
    result = await run(cfg(rounds=3, buffer_size=2, staleness_weighting="constant"), trainers, rec)
    first = rec.of(ev.RoundCompleted)[0]
    np.testing.assert_array_equal(first.params["w"], np.full(4, 2.5, np.float32))  # (10*1 + 30*3) / 40
    np.testing.assert_allclose(result.params["w"], np.full(4, 7.5, np.float32))
    assert result.rounds == 3 and [e.num_updates for e in rec.of(ev.RoundCompleted)] == [2, 2, 2]


@pytest.mark.parametrize(("weighting", "expected"), [("constant", 6.0), ("polynomial", 4.5)])
async def test_each_update_counts_by_its_staleness(weighting: str, expected: float) -> None:
    # A buffer of one: the first answer of each pair makes a version, the second (trained on the
    # version before it) is one version stale: weight 1, or 1/(1+1)**1 = 0.5. Six versions.
    rec = Recorder()
    config = cfg(buffer_size=1, staleness_weighting=weighting, staleness_exponent=1.0)
    result = await run(config, [ShiftTrainer(1.0), ShiftTrainer(1.0)], rec)
    np.testing.assert_allclose(result.params["w"], np.full(4, expected, np.float32))
    done = rec.of(ev.RoundCompleted)
    assert [e.round for e in done] == [1, 2, 3, 4, 5, 6] and all(e.num_updates == 1 for e in done)
    assert [e.client_id for e in rec.of(ev.UpdateAccepted)] == ["client-0", "client-1"] * 3


# -- a stale update -------------------------------------------------------------------------------------
class _HeldTransport(TransportWrapper):
    """Holds the client's first UPDATE until ``release`` is set (a client slower than all others)."""

    def __init__(self, inner: Transport, release: asyncio.Event) -> None:
        super().__init__(inner)
        self.release, self.held = release, False

    async def send(self, to: str, message: Message) -> None:
        if message.kind is Kind.UPDATE and not self.held:
            self.held = True
            await self.release.wait()
        await self.inner.send(to, message)


class _HoldingNetwork(MemoryNetwork):
    def __init__(self, slow: str, release: asyncio.Event) -> None:
        super().__init__()
        self.slow, self.release = slow, release

    def connect(self, node_id: str, *, aliases: Sequence[str] = ()):  # type: ignore[override]
        inner = super().connect(node_id, aliases=aliases)
        return _HeldTransport(inner, self.release) if node_id == self.slow else inner


class _TwoHeld(MemoryNetwork):
    def __init__(self, release: asyncio.Event) -> None:
        super().__init__()
        self.release = release

    def connect(self, node_id: str, *, aliases: Sequence[str] = ()):  # type: ignore[override]
        inner = super().connect(node_id, aliases=aliases)
        return inner if node_id == COORDINATOR_ID else _HeldTransport(inner, self.release)


async def test_an_update_staler_than_max_staleness_is_rejected_and_named() -> None:
    rec, release = Recorder(), asyncio.Event()

    def release_after_version_4(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, lambda e: release.set() if e.round >= 4 else None)

    config = cfg(rounds=7, buffer_size=1, max_staleness=2)
    result = await run(
        config,
        [ShiftTrainer(1.0), ShiftTrainer(50.0)],
        None,
        network=_HoldingNetwork("client-1", release),
        observers=[rec.attach, release_after_version_4],
    )
    stale = [e for e in rec.of(ev.UpdateRejected) if e.client_id == "client-1"]
    assert len(stale) == 1
    assert stale[0].reason.startswith("stale: trained from version 0, the model is at version ")
    assert "max_staleness=2" in stale[0].reason
    assert result.rounds == 7  # the session went on; client-1's later, fresher updates counted
    assert any(e.client_id == "client-1" for e in rec.of(ev.UpdateAccepted))
    assert result.params["w"][0] > 7.0


async def test_bad_updates_are_rejected_and_the_session_goes_on() -> None:
    rec = Recorder()
    result = await run(cfg(rounds=4, buffer_size=2), [ShiftTrainer(1.0), BadTrainer("nan"), BadTrainer("shape")], rec)
    assert result.rounds == 4
    reasons = {e.client_id: e.reason for e in rec.of(ev.UpdateRejected)}
    assert "NaN" in reasons["client-1"] and "shape" in reasons["client-2"]
    assert {e.client_id for e in rec.of(ev.UpdateAccepted)} == {"client-0"}


async def test_no_version_within_the_deadline_fails_the_session_with_its_reason() -> None:
    never = asyncio.Event()  # both clients' updates are held for good: nothing comes
    config = cfg(buffer_size=1, round_timeout_s=0.3, max_round_retries=0)
    why = r"round 1: 0 of buffer_size=1 updates within 0.3 s; 0 clients training, 2 waiting for the next version"
    with pytest.raises(SessionFailed, match=why):
        await run(config, [ShiftTrainer(1.0), ShiftTrainer(1.0)], network=_TwoHeld(never))


# -- what async refuses -------------------------------------------------------------------------------
def test_async_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ConfigError, match="secure aggregation sums whole rounds"):
        make_config(aggregation="async", secure_aggregation=True)
    with pytest.raises(ConfigError, match="aggregation"):
        make_config(aggregation="sometimes")
    net = MemoryNetwork()
    params = ShiftTrainer(1.0).initial_params(0)
    with pytest.raises(ConfigError, match="Poisson-sampled rounds"):
        Coordinator(cfg(strategy="dp-fedavg:clip=1,noise=0.5"), net.connect(COORDINATOR_ID), params)
    with pytest.raises(ConfigError, match="a session over combiners is refused"):
        HierarchicalCoordinator(cfg(), net.connect("c2"), params)


# -- a real app ----------------------------------------------------------------------------------------
async def test_an_async_session_of_the_builtin_app_converges_on_digits() -> None:
    config = cfg(rounds=24, min_clients=20, buffer_size=5, model="logreg-np", lr=0.1, data={"dataset": "digits"})
    site = DataSpec(dataset="digits", partition="iid").model_dump(exclude_none=True)
    plan = plan_simulation(config, load_app("builtin"), 20, node=site, evaluate="central")
    rec = Recorder()
    async with asyncio.timeout(60):
        result = await run_federation(
            plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator,
            observers=[rec.attach],
        )  # fmt: skip
    assert result.rounds == 24 and result.metrics["accuracy"] > 0.85
    assert all(e.num_updates == 5 for e in rec.of(ev.RoundCompleted))
    assert plan.evaluator is not None
    assert plan.evaluator.evaluate(plan.initial_params).metrics["accuracy"] < 0.3  # where it started


# -- checkpoint and resume ------------------------------------------------------------------------------
async def nodes_session(config: SessionConfig, coordinator: Coordinator, net: MemoryNetwork) -> None:
    """The coordinator and two ShiftTrainer clients as nodes on ``net``, until the session ends."""
    clients = [
        ClientNode(cid, net.connect(cid), lambda _c: ShiftTrainer(1.0), num_examples=10, heartbeat_interval_s=None)
        for cid in ("client-0", "client-1")
    ]
    runs = [asyncio.create_task(c.run()) for c in clients]
    try:
        async with asyncio.timeout(30):
            await coordinator.run()
    finally:
        for c, task in zip(clients, runs, strict=True):
            await c.transport.close()
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def test_a_resumed_async_session_restarts_from_its_last_checkpointed_version(tmp_path: Path) -> None:
    raw = {"session_id": "a1", "rounds": 6, "min_clients": 2, "aggregation": "async", "buffer_size": 1}
    session = parse_session(
        {**raw, "staleness_weighting": "constant", "model": "logreg-np", "data": {"dataset": "digits"}},
        tmp_path / "session.toml",
    )
    config = session.config
    params = ShiftTrainer(1.0).initial_params(0)
    identity = fingerprint(session, params.spec)

    def crash_after_version_3(bus: EventBus) -> None:  # attached after the checkpoint writer: stops the bus
        bus.on(ev.RoundCompleted, lambda e: bus.stop(SessionFailed("crash")) if e.round == 3 else None)

    net = MemoryNetwork()
    first = Coordinator(config, net.connect(COORDINATOR_ID), params, strategy=strategy_for(config, None))
    RunCheckpoint(tmp_path, "a1", first.strategy, identity).attach(first.bus)
    crash_after_version_3(first.bus)
    with pytest.raises(SessionFailed, match="crash"):
        await nodes_session(config, first, net)

    found = load_run_checkpoint(tmp_path, session, params.spec, session_named=True)
    assert found is not None
    checkpoint = found[1]  # version 3's, or a later one checkpointed while the bus stopped
    done = checkpoint.round
    assert 3 <= done < 6 and len(checkpoint.history) == done
    np.testing.assert_allclose(checkpoint.params["w"], np.full(4, done, np.float32))  # a shift of 1 per version

    net, rec = MemoryNetwork(), Recorder()
    resumed = coordinator_kwargs(config, checkpoint)
    second = Coordinator(config, net.connect(COORDINATOR_ID), checkpoint.params, **resumed)
    rec.attach(second.bus)
    await nodes_session(config, second, net)
    rest = list(range(done + 1, 7))
    assert [e.round for e in rec.of(ev.RoundCompleted)] == rest
    assert {e.round for e in rec.of(ev.UpdateAccepted)} == set(rest)
    assert min(e.round for e in rec.of(ev.RoundStarted)) == done + 1  # TRAIN carries the checkpoint's version
    result = second._result()
    assert result.rounds == 6 and len(result.history) == 6
    np.testing.assert_allclose(result.params["w"], np.full(4, 6.0, np.float32))
