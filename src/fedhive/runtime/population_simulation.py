"""``simulate`` with a population far larger than a round (``runtime.population``).

``plan_simulation`` makes a ``SiteApp`` and a trainer per client before round 1; from
``POPULATION_FROM`` clients on, ``fedhive simulate`` plans a population instead: columns for the
bookkeeping, the server side's app, and a way to make any client's ``SiteApp`` from its index when
it is sampled. A seed gives the same clients, the same seeds, the same chunks and so the same bits
as ``run_federation`` over the same clients (the tests compare them at a size both can run).

Only sessions whose clients can sit behind one host run as a population: synchronous, without
compression or secure aggregation, and with paced clients (``--client-speed``) left to the
per-client path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fedhive.app.learner import Evaluator
from fedhive.app.loader import LoadedApp
from fedhive.core.bodies import MAX_CLIENTS
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client_host import HostTraining, InProcessTraining
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator, SessionResult
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.parallel_host import PoolTraining
from fedhive.runtime.population import Population
from fedhive.runtime.population_host import PopulationHost
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import HOST_ID, _evaluation, _serve, _unwrap, client_id
from fedhive.runtime.site_app import ServerApp, SiteApp, session_with_app
from fedhive.runtime.worker_pool import WorkerPool
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.memory import MemoryNetwork

POPULATION_FROM = 10_001  # clients from which ``fedhive simulate`` plans a population

Observer = Callable[[EventBus], None]


def is_population(clients: int) -> bool:
    return clients >= POPULATION_FROM


def population_node(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """The site settings every client of a population gets (``ctx.node``), and worker processes."""
    return {**(node or {}), "population": True}


@dataclass(frozen=True)
class PopulationPlan:
    """Everything a population's session needs; ``site_of`` makes a client's app when sampled."""

    config: SessionConfig
    population: Population
    site_of: Callable[[int, str], SiteApp]
    evaluator: Evaluator | None
    initial_params: Params


def plan_population(
    config: SessionConfig,
    loaded: LoadedApp,
    clients: int,
    *,
    node: Mapping[str, Any] | None = None,
    evaluate: str = "auto",
) -> PopulationPlan:
    """As ``simulation.plan_simulation``, for ``clients`` that are made only when sampled; their
    ``ctx.node`` is ``node`` plus ``partition_id``, ``num_partitions`` and ``population`` (True).

    Raises ``ConfigError`` for a session a population cannot run, before any training starts."""
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, got {clients}")
    refuse_population(config)
    per_round = config.selection_size(clients)
    if per_round > MAX_CLIENTS:
        raise ConfigError(
            f"{per_round:,} clients a round: a population trains at most {MAX_CLIENTS:,} a round; "
            "give --per-round N or a smaller --fraction"
        )
    parse_strategy(config.strategy)
    base = population_node(node)
    mode, every = _evaluation(evaluate, loaded)
    if config.evaluate_every is None:
        config = config.model_copy(update={"evaluate_every": every})
    config = session_with_app(config, loaded)
    server = ServerApp(loaded, config, {**base, "num_partitions": clients})
    population = Population(clients, host=HOST_ID)

    def site_of(index: int, cid: str) -> SiteApp:
        return SiteApp(loaded, cid, {**base, "partition_id": index, "num_partitions": clients})

    site_of(0, client_id(0, clients)).trainer_for(config)  # the app takes the session, or fails now
    evaluator = server.evaluator() if mode == "central" else None
    return PopulationPlan(config, population, site_of, evaluator, server.initial_params())


def refuse_population(config: SessionConfig) -> None:
    """A ``ConfigError`` for a session whose clients need a node each (so not a population)."""
    if config.aggregation != "sync":
        raise ConfigError("a population runs synchronous rounds: aggregation 'async' needs a node per client")
    if config.compression != "none":
        raise ConfigError("a population's clients send updates uncompressed: compression needs a node per client")
    if config.secure_aggregation:
        raise ConfigError("secure aggregation needs a node per client: not with a population")


async def run_population(
    plan: PopulationPlan,
    *,
    initial_params: Params | None = None,
    observers: Sequence[Observer] = (),
    network: MemoryNetwork | None = None,
    threaded: bool = False,
    workers: WorkerPool | None = None,
) -> SessionResult:
    """Run a population's session: one coordinator over the population's columns, one host that
    makes the sampled clients; training inline, in one thread (``threaded``), or in ``workers``
    (started here and closed when the session ends)."""
    config = plan.config.model_copy(update={"heartbeat_interval_s": None, "heartbeat_timeout_s": None})
    net = network or MemoryNetwork()
    coordinator = Coordinator(
        config,
        net.connect(COORDINATOR_ID),
        plan.initial_params if initial_params is None else initial_params,
        evaluator=plan.evaluator,
        executor=None if threaded else InlineExecutor(),
        population=plan.population,
    )
    for attach in observers:
        attach(coordinator.bus)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-virtual-clients") if threaded else InlineExecutor()
    training: HostTraining = PoolTraining(workers) if workers is not None else InProcessTraining(pool)
    host = PopulationHost(
        HOST_ID,
        net.connect(HOST_ID),
        plan.population,
        plan.site_of,
        plan.config,
        training=training,
        register_timeout_s=config.registration_timeout_s,
    )
    try:
        if workers is not None and not workers.adaptive:
            await workers.start(coordinator.params.spec)
        return _unwrap(await _serve(coordinator, host))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if workers is not None:
            await workers.aclose()
