"""A whole hierarchical federation in one process: a coordinator, K combiners and N virtual clients
on the memory transport (for benchmarks and a future ``simulate --combiners K``).

The nodes are the networked ones (``HierarchicalCoordinator``, ``Combiner``, assigned clients);
only the transport differs, as in ``runtime.simulation``. Virtual clients train inline, one at a
time, so a run is reproducible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from fedhive.app.learner import Evaluator, Trainer
from fedhive.core.params import Params
from fedhive.runtime.assigned_client import run_assigned_client
from fedhive.runtime.bus import EventBus
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import client_id
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.memory import MemoryNetwork

Observer = Callable[[EventBus], None]


async def run_hierarchy(
    config: SessionConfig,
    trainers: Sequence[Trainer],
    num_examples: Sequence[int],
    initial_params: Params,
    *,
    combiners: int,
    evaluator: Evaluator | None = None,
    strategy: Strategy | None = None,
    observers: Sequence[Observer] = (),
    network: MemoryNetwork | None = None,
    heartbeat_s: float = 1.0,
    exact_partials: bool = False,
) -> SessionResult:
    """Run one session; ``config.min_clients`` clients must have reached their combiners before
    round 1. Raises ``SessionFailed`` like the flat simulation."""
    net = network or MemoryNetwork()
    strategy = strategy or parse_strategy(config.strategy)
    # A client that its combiner's draw leaves out (DP-FedAvg's Poisson sampling) may sit out many
    # rounds: it beats, or its combiner would take its silence for death. Otherwise every client
    # trains every round and the beats are left out, as they always were.
    client_beat = heartbeat_s if strategy.client_sampling() is not None else None
    live = {"heartbeat_interval_s": heartbeat_s, "heartbeat_timeout_s": 4 * heartbeat_s}
    config = config.model_copy(update=live)
    coordinator = HierarchicalCoordinator(
        config,
        net.connect(COORDINATOR_ID),
        initial_params,
        min_combiners=combiners,
        strategy=strategy,
        evaluator=evaluator,
    )
    for attach in observers:
        attach(coordinator.bus)
    nodes = [
        Combiner(
            f"combiner-{i}",
            net.connect(f"combiner-{i}"),
            heartbeat_interval_s=heartbeat_s,
            heartbeat_timeout_s=4 * heartbeat_s,
            upstream_timeout_s=10 * heartbeat_s,
            exact_partials=exact_partials,
        )
        for i in range(combiners)
    ]
    inline = InlineExecutor()
    ids = [client_id(i, len(trainers)) for i in range(len(trainers))]
    clients = [
        run_assigned_client(
            cid,
            net.connect(cid),
            _constant(trainer),
            num_examples=n,
            assign_timeout_s=config.registration_timeout_s,
            combiner_timeout_s=5 * heartbeat_s,
            executor=inline,
            heartbeat_interval_s=client_beat,
        )
        for cid, trainer, n in zip(ids, trainers, num_examples, strict=True)
    ]
    tasks = [asyncio.ensure_future(c.run()) for c in nodes] + [asyncio.ensure_future(c) for c in clients]
    try:
        return await coordinator.run()
    finally:
        # Combiners and clients end on the STOP they are sent; whatever did not is ended here.
        _, pending = await asyncio.wait(tasks, timeout=5 * heartbeat_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _constant(trainer: Trainer) -> Callable[[SessionConfig], Trainer]:
    return lambda _config: trainer
