"""A hierarchical federation on one ``MemoryNetwork``, as the hierarchy tests build it: the
coordinator, ``combiners`` combiners and one assigned client per trainer, none of them started
(each test starts the tasks and wires its own events first)."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from fakes import ShiftTrainer
from fedhive.runtime.assigned_client import run_assigned_client
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.memory import MemoryNetwork


@dataclass
class MemoryHierarchy:
    coordinator: HierarchicalCoordinator
    combiners: list[Combiner]  # combiner-0, combiner-1, ...
    clients: list[Coroutine[Any, Any, object]]  # client-i trains with trainers[i]


def memory_hierarchy(
    config: SessionConfig,
    trainers: Sequence[ShiftTrainer],
    *,
    combiners: int,
    combiner_options: dict[str, Any],
    client_options: dict[str, Any],
) -> MemoryHierarchy:
    """``combiner_options`` and ``client_options`` are the timeouts and the like each test sets on
    every ``Combiner`` and ``run_assigned_client``."""
    net = MemoryNetwork()
    coordinator = HierarchicalCoordinator(
        config, net.connect(COORDINATOR_ID), trainers[0].initial_params(0), min_combiners=combiners
    )
    nodes = [Combiner(f"combiner-{i}", net.connect(f"combiner-{i}"), **combiner_options) for i in range(combiners)]
    clients = [
        run_assigned_client(
            f"client-{i}",
            net.connect(f"client-{i}"),
            (lambda t: lambda _c: t)(t),  # each client its own trainer (bound now, not at the loop's end)
            num_examples=t.num_examples,
            **client_options,
        )
        for i, t in enumerate(trainers)
    ]
    return MemoryHierarchy(coordinator, nodes, clients)
