"""A whole federation in one process: a coordinator and N virtual clients on the memory transport.

This is the same coordinator and client code that runs over RabbitMQ; only the transport differs.
All virtual clients share one worker thread, so client training runs one at a time in a fixed
order: the run is bitwise reproducible for a seed, and the event loop stays free for messaging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError
from fedhive.learning.factory import build_trainer
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.learning.models import parse_model_spec
from fedhive.learning.trainer import Trainer
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator, SessionResult
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.memory import MemoryNetwork

Observer = Callable[[EventBus], None]


def client_id(index: int, total: int) -> str:
    return f"client-{index:0{len(str(max(total - 1, 1)))}d}"


async def run_federation(
    config: SessionConfig,
    trainers: Sequence[Trainer],
    num_examples: Sequence[int],
    initial_params: Params,
    *,
    evaluator: Trainer | None = None,
    strategy: Strategy | None = None,
    observers: Sequence[Observer] = (),
    network: MemoryNetwork | None = None,
    threaded: bool = False,
) -> SessionResult:
    """Run one session with ``len(trainers)`` virtual clients; returns the final model and history.

    Training runs inline on the event loop (see ``InlineExecutor``), or with ``threaded=True`` in
    one worker thread, which keeps the loop responsive for a process that also serves an API.
    """
    # Virtual clients live and die with this process: no heartbeat bookkeeping needed.
    config = config.model_copy(update={"heartbeat_interval_s": None, "heartbeat_timeout_s": None})
    net = network or MemoryNetwork()
    ids = [client_id(i, len(trainers)) for i in range(len(trainers))]
    coordinator = Coordinator(
        config, net.connect(COORDINATOR_ID), initial_params, strategy=strategy, evaluator=evaluator
    )
    for attach in observers:
        attach(coordinator.bus)
    # Not a ``with`` block: leaving it would wait for a virtual client stuck in its trainer, and a
    # session must end at its deadlines whatever its clients do.
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-virtual-clients") if threaded else InlineExecutor()
    clients = [
        ClientNode(
            cid,
            net.connect(cid),
            _constant(trainer),
            num_examples=n,
            executor=pool,
            heartbeat_interval_s=None,
            register_timeout_s=config.registration_timeout_s,
        )
        for cid, trainer, n in zip(ids, trainers, num_examples, strict=True)
    ]
    try:
        async with asyncio.TaskGroup() as tg:
            session = tg.create_task(_outcome(coordinator.run()), name="coordinator")
            for c in clients:
                tg.create_task(_run_client(c, session), name=c.node_id)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    outcome = session.result()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


async def _outcome(run: Coroutine[Any, Any, SessionResult]) -> SessionResult | FedhiveError:
    """The session's result or its failure, so that a failed session does not surface as an
    ExceptionGroup from the task group."""
    try:
        return await run
    except FedhiveError as exc:
        return exc


async def _run_client(client: ClientNode, session: asyncio.Task[SessionResult | FedhiveError]) -> None:
    # A client ends on STOP; if the session fails instead, it ends with the session.
    task = asyncio.ensure_future(client.run())
    await asyncio.wait([task, session], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        await client.transport.close()
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _constant(trainer: Trainer) -> Callable[[SessionConfig], Trainer]:
    return lambda _config: trainer


@dataclass(frozen=True)
class SimulationPlan:
    """Everything a simulated session needs, built from specs (and validated) before it starts."""

    config: SessionConfig
    trainers: list[Trainer]
    num_examples: list[int]
    evaluator: Trainer
    initial_params: Params


def plan_simulation(config: SessionConfig, data: DataSpec, clients: int) -> SimulationPlan:
    """Load and partition the data, build one trainer per client and the held-out evaluator.

    Raises ``ConfigError``/``DataError`` for bad specs or data, before any training starts.
    """
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, got {clients}")
    parse_model_spec(config.model)
    parse_strategy(config.strategy)
    data.check()
    fed = prepare(data, clients, config.seed)
    trainers = [build_trainer(config.model, s.x, s.y, fed.num_classes) for s in fed.shards]
    evaluator = build_trainer(config.model, fed.test.x, fed.test.y, fed.num_classes)
    return SimulationPlan(
        config, trainers, [len(s) for s in fed.shards], evaluator, evaluator.initial_params(config.seed)
    )
