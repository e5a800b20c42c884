"""A whole federation in one process: a coordinator and N virtual clients on the memory transport.

This is the same coordinator that runs over RabbitMQ; only the transport differs. The clients run
behind one ``ClientHost`` (one TRAIN per round, one partial per chunk of clients: the per-message
cost of 1000 client nodes was a third of the training time of a small model), or, for sessions
that compress updates and with ``hosted=False``, as one ``ClientNode`` each, exactly as they run
over a broker. The virtual clients train one at a time in a fixed order, inline or in one worker
thread, or, given a ``WorkerPool``, in worker processes on every core (``runtime.parallel_host``),
whose updates are folded in that same fixed order: either way the run is bitwise reproducible for
a seed, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fedhive.app.learner import Evaluator, Trainer
from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.client_host import ClientHost, HostedClient, InProcessTraining
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator, SessionResult
from fedhive.runtime.inline_executor import InlineExecutor
from fedhive.runtime.parallel_host import PoolTraining
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import ServerApp, SiteApp, session_with_app
from fedhive.runtime.worker_devices import cores, visible_gpus, worker_devices
from fedhive.runtime.worker_pool import WorkerPool, app_source, early_source
from fedhive.strategies.base import Strategy
from fedhive.strategies.registry import parse_strategy
from fedhive.transports.base import Transport
from fedhive.transports.memory import MemoryNetwork

Observer = Callable[[EventBus], None]

log = logging.getLogger("fedhive.simulation")


def client_id(index: int, total: int) -> str:
    return f"client-{index:0{len(str(max(total - 1, 1)))}d}"


async def run_federation(
    config: SessionConfig,
    trainers: Sequence[Trainer],
    num_examples: Sequence[int],
    initial_params: Params,
    *,
    evaluator: Evaluator | None = None,
    strategy: Strategy | None = None,
    observers: Sequence[Observer] = (),
    network: MemoryNetwork | None = None,
    threaded: bool = False,
    hosted: bool | None = None,
    secagg_dropout: float = 0.0,
    workers: WorkerPool | None = None,
) -> SessionResult:
    """Run one session with ``len(trainers)`` virtual clients; returns the final model and history.

    Training runs inline on the event loop (see ``InlineExecutor``), or with ``threaded=True`` in
    one worker thread, which keeps the loop responsive for a process that also serves an API.
    ``hosted`` (the default unless the session compresses updates) runs the clients behind one
    ``ClientHost``; ``hosted=False`` gives each its own ``ClientNode``, as over a broker.

    ``workers`` (``parallel_ok`` says when they can be used) train the hosted clients in worker
    processes instead; ``trainers`` then only check, at ENABLE, that the model fits each client.
    The pool is started here and closed when the session ends.

    With ``config.secure_aggregation`` the host's clients are summed by secure aggregation
    (``secagg.host_link``); ``secagg_dropout`` of each round's clients then drop out after sending
    their masked update (a test of the protocol's recovery).
    """
    if hosted is None:
        hosted = config.compression == "none" and config.aggregation == "sync"  # async: each client a node
    if config.secure_aggregation:
        from fedhive.secagg.settings import secure_weighting  # here: only its sessions need cryptography

        secure_weighting(strategy or parse_strategy(config.strategy))
        if not hosted:
            raise ConfigError("secure aggregation runs simulated clients behind a client host: hosted=False is refused")
    # Virtual clients live and die with this process: no heartbeat bookkeeping needed.
    config = config.model_copy(update={"heartbeat_interval_s": None, "heartbeat_timeout_s": None})
    net = network or MemoryNetwork()
    ids = [client_id(i, len(trainers)) for i in range(len(trainers))]
    # Inline, the coordinator's aggregation and evaluation skip a hop to a worker thread and back
    # each round (the loop has nothing else to do meanwhile); threaded, the loop stays responsive.
    coordinator = Coordinator(
        config,
        net.connect(COORDINATOR_ID),
        initial_params,
        strategy=strategy,
        evaluator=evaluator,
        executor=None if threaded else InlineExecutor(),
    )
    for attach in observers:
        attach(coordinator.bus)
    if workers is not None:
        if not (hosted and parallel_ok(config)):
            await workers.aclose()
            raise ConfigError("worker processes train hosted clients of sync sessions without compression or secagg")
        try:
            if not workers.adaptive:  # an adaptive pool is started by its host, if its clients are worth it
                await workers.start(initial_params.spec)
            return _unwrap(await _run_parallel(coordinator, net, ids, trainers, num_examples, workers, config))
        finally:
            await workers.aclose()
    # Not a ``with`` block: leaving it would wait for a virtual client stuck in its trainer, and a
    # session must end at its deadlines whatever its clients do.
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-virtual-clients") if threaded else InlineExecutor()
    if hosted:
        try:
            hosted_run = _run_hosted(coordinator, net, ids, trainers, num_examples, pool, config, secagg_dropout)
            return _unwrap(await hosted_run)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    gate = FoldGate.for_model(initial_params.nbytes, minimum=2 if threaded else 1)
    gate.attach(coordinator.bus)
    clients = [
        ClientNode(
            cid,
            net.connect(cid),
            _constant(trainer),
            num_examples=n,
            executor=pool,
            heartbeat_interval_s=None,
            register_timeout_s=config.registration_timeout_s,
            fit_gate=gate,
        )
        for cid, trainer, n in zip(ids, trainers, num_examples, strict=True)
    ]
    try:
        async with asyncio.TaskGroup() as tg:
            # Clients first: they register before the coordinator's receiver first looks, so it
            # answers them in id order, and they get (and train on) each message in id order.
            runs = [tg.create_task(_run_client(c), name=c.node_id) for c in clients]
            session = tg.create_task(_outcome(coordinator.run()), name="coordinator")
            tg.create_task(_end_clients(session, clients, runs), name="end-clients")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return _unwrap(session.result())


HOST_ID = "client-host"


def launch_early(requested: int | None, ref: str, node: Mapping[str, Any], clients: int) -> WorkerPool | None:
    """``requested`` (more than one) workers started from the app's reference before this process
    loads the app, so that their imports (torch, the app's own) overlap this process's; hand the
    pool to ``start_workers``, which keeps it only if it is the app this process then loaded."""
    if requested is None or requested <= 1:
        return None
    devices = worker_devices(requested, cores=cores(), gpus=visible_gpus(node.get("device")), clients=clients)
    return WorkerPool(early_source(ref, node, clients), devices) if len(devices) > 1 else None


def start_workers(
    requested: int | None,
    loaded: LoadedApp,
    node: Mapping[str, Any],
    clients: int,
    config: SessionConfig,
    early: WorkerPool | None = None,
) -> tuple[WorkerPool | None, str | None]:
    """The worker processes a simulation trains its clients in, or None to train them in this
    process (with the reason, when more than one worker cannot be had).

    ``requested`` workers are started now (or were, ``early``: ``launch_early``), so that they
    load the app while this process plans the session. By default (None) the pool is adaptive:
    one worker per core, or per GPU for a torch app (``worker_devices``), started only if the
    clients prove slow enough to be worth it (``parallel_host.launch_worth_it``)."""
    pool, why_not = _workers_for(requested, loaded, node, clients, config, early)
    if early is not None and pool is not early:
        early.close()  # another app than the one they load, or a session that trains here
    return pool, why_not


def _workers_for(
    requested: int | None,
    loaded: LoadedApp,
    node: Mapping[str, Any],
    clients: int,
    config: SessionConfig,
    early: WorkerPool | None,
) -> tuple[WorkerPool | None, str | None]:
    devices = worker_devices(requested, cores=cores(), gpus=visible_gpus(node.get("device")), clients=clients)
    if len(devices) == 1:
        return None, None
    if not parallel_ok(config):
        return None, "sessions that compress updates, aggregate asynchronously or use secure aggregation train here"
    if early is not None and early.adopt(loaded):
        return early, None
    source = app_source(loaded, node, clients)
    if source is None:
        return None, f"app {loaded.name!r} is not one a worker process can load by reference: trained in this process"
    return WorkerPool(source, devices, adaptive=requested is None), None


def parallel_ok(config: SessionConfig) -> bool:
    """Whether the session's clients can train in worker processes: hosted, as the default is for
    a synchronous session without compression, and not summed by secure aggregation (whose host
    link trains its clients itself)."""
    return config.compression == "none" and config.aggregation == "sync" and not config.secure_aggregation


async def _run_parallel(
    coordinator: Coordinator,
    net: MemoryNetwork,
    ids: list[str],
    trainers: Sequence[Trainer],
    num_examples: Sequence[int],
    workers: WorkerPool,
    config: SessionConfig,
) -> SessionResult | FedhiveError:
    clients = [HostedClient(c, t, n) for c, t, n in zip(ids, trainers, num_examples, strict=True)]
    link = net.connect(HOST_ID, aliases=ids)
    training = PoolTraining(workers)
    host = ClientHost(HOST_ID, link, clients, training=training, register_timeout_s=config.registration_timeout_s)
    return await _serve(coordinator, host)


async def _run_hosted(
    coordinator: Coordinator,
    net: MemoryNetwork,
    ids: list[str],
    trainers: Sequence[Trainer],
    num_examples: Sequence[int],
    pool: Executor,
    config: SessionConfig,
    secagg_dropout: float,
) -> SessionResult | FedhiveError:
    clients = [HostedClient(c, t, n) for c, t, n in zip(ids, trainers, num_examples, strict=True)]
    link: Transport = net.connect(HOST_ID, aliases=ids)
    if config.secure_aggregation:  # TRAIN is answered by a secure sum, not by the host's plain one
        from fedhive.secagg.host_link import SecureHostLink

        link = SecureHostLink(link, clients, executor=pool, dropout=secagg_dropout)
    host = ClientHost(
        HOST_ID,
        link,
        clients,
        training=InProcessTraining(pool),
        register_timeout_s=config.registration_timeout_s,
    )
    return await _serve(coordinator, host)


async def _serve(coordinator: Coordinator, host: ClientHost) -> SessionResult | FedhiveError:
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(_run_node(host.run(), HOST_ID), name=HOST_ID)  # registers before the coordinator looks
        session = tg.create_task(_outcome(coordinator.run()), name="coordinator")
        await asyncio.wait([session])
        if not run.done():
            await host.transport.close()
            run.cancel()
    return session.result()


def _unwrap(outcome: SessionResult | FedhiveError) -> SessionResult:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class FoldGate:
    """At most ``limit`` virtual clients hold an update the coordinator has not folded yet.

    Why: every virtual client of a round gets its TRAIN at once, and inline they all train before
    the coordinator's receiver runs again, so each update of the round would be alive at the same
    time (ten 100 MB updates: 1 GB). A client takes a slot before training; the slot comes back
    when the coordinator has accepted or rejected its update, or when the client sends none. The
    limit follows from a byte budget, so small models are not slowed down and memory does not
    grow with the number of clients either way.
    """

    BUDGET_BYTES = 64 * 1024 * 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._holders: set[str] = set()

    @classmethod
    def for_model(cls, model_bytes: int, *, minimum: int = 1) -> FoldGate:
        return cls(max(minimum, cls.BUDGET_BYTES // max(1, model_bytes)))

    def attach(self, coordinator_bus: EventBus) -> None:
        coordinator_bus.on(ev.UpdateAccepted, lambda e: self.release(e.client_id))
        coordinator_bus.on(ev.UpdateRejected, lambda e: self.release(e.client_id))

    async def acquire(self, client_id: str) -> None:
        await self._slots.acquire()
        self._holders.add(client_id)

    def release(self, client_id: str) -> None:
        if client_id in self._holders:  # one slot per update, however many events name it
            self._holders.discard(client_id)
            self._slots.release()


async def _outcome(run: Coroutine[Any, Any, SessionResult]) -> SessionResult | FedhiveError:
    """The session's result or its failure, so that a failed session does not surface as an
    ExceptionGroup from the task group."""
    try:
        return await run
    except FedhiveError as exc:
        return exc


async def _run_client(client: ClientNode) -> None:
    await _run_node(client.run(), client.node_id)


async def _run_node(run: Coroutine[Any, Any, None], node_id: str) -> None:
    # A client's own failure (the session failed, it was cut off) is the session's to report.
    try:
        await run
    except FedhiveError as exc:
        log.debug("%s ended: %s", node_id, exc)
    except Exception:  # a bug in its trainer: the coordinator sees a client that did not answer
        log.warning("%s crashed", node_id, exc_info=True)


async def _end_clients(
    session: asyncio.Task[SessionResult | FedhiveError], clients: Sequence[ClientNode], runs: list[asyncio.Task[None]]
) -> None:
    """A client ends on STOP; those still running when the session is over end with it. One task
    for all clients: waiting on the session once per client would cost a task and a callback each."""
    await asyncio.wait([session])
    for client, run in zip(clients, runs, strict=True):
        if not run.done():
            await client.transport.close()
            run.cancel()


def _constant(trainer: Trainer) -> Callable[[SessionConfig], Trainer]:
    return lambda _config: trainer


@dataclass(frozen=True)
class SimulationPlan:
    """Everything a simulated session needs, built (and validated) before it starts."""

    config: SessionConfig
    trainers: list[Trainer]
    num_examples: list[int]
    evaluator: Evaluator | None
    initial_params: Params


def plan_simulation(
    config: SessionConfig,
    loaded: LoadedApp,
    clients: int,
    *,
    node: Mapping[str, Any] | None = None,
    evaluate: str = "auto",
) -> SimulationPlan:
    """One ``SiteApp`` per virtual client (``ctx.node`` = ``node`` plus ``partition_id`` and
    ``num_partitions``, as Flower apps expect), the initial model from the app's ``init`` and
    how the global model is evaluated after each round:

    - ``central``: the app's ``central_evaluate`` on data the server side holds;
    - ``clients``: federated evaluation, every client's ``evaluate`` on its own data, weighted by
      examples (``runtime.evaluation``: EVALUATE and EVALUATION messages, as over a broker);
    - ``auto``: ``central`` if the app has it, else ``clients`` if it has ``evaluate``, else none
      (the round's client-weighted training metrics are reported instead).

    Raises ``ConfigError``/``AppError`` for bad settings, before any training starts.
    """
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, got {clients}")
    strategy = parse_strategy(config.strategy)
    if config.secure_aggregation:
        from fedhive.secagg.settings import secure_weighting

        secure_weighting(strategy)
    base = dict(node or {})
    mode, every = _evaluation(evaluate, loaded)
    if config.evaluate_every is None:
        config = config.model_copy(update={"evaluate_every": every})
    config = session_with_app(config, loaded)
    server = ServerApp(loaded, config, {**base, "num_partitions": clients})
    sites = [
        SiteApp(loaded, client_id(i, clients), {**base, "partition_id": i, "num_partitions": clients})
        for i in range(clients)
    ]
    trainers = [site.trainer_for(config) for site in sites]
    evaluator = server.evaluator() if mode == "central" else None
    return SimulationPlan(config, trainers, [0] * clients, evaluator, server.initial_params())


def _evaluation(mode: str, loaded: LoadedApp) -> tuple[str, int]:
    """(``central``, ``clients`` or ``none``; how often clients evaluate: 0 never) for ``mode``."""
    app = loaded.app
    if mode == "auto":
        mode = "central" if app.has("central_evaluate") else "clients" if app.has("evaluate") else "none"
    if mode == "central" and not app.has("central_evaluate"):
        raise ConfigError(f"app {loaded.name!r} has no central_evaluate: use --evaluate clients or none")
    if mode == "clients" and not app.has("evaluate"):
        raise ConfigError(f"app {loaded.name!r} has no evaluate: use --evaluate central or none")
    if mode not in ("central", "clients", "none"):
        raise ConfigError(f"--evaluate must be auto, central, clients or none, got {mode!r}")
    return mode, 1 if mode == "clients" else 0
