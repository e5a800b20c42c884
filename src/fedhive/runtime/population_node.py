"""The coordinator's side of a simulated population (``runtime.population``).

A flat coordinator over clients, but for three things that would cost one Python object (or one
message) per client of the population:

- who takes part: ``PopulationDownstream`` draws each round's clients from the population's
  columns (``select``, with the very draw a registry of the same clients would make) and keeps the
  position of the drawn clients only; the node it enables, and later stops, is the population's
  host, which answers for every client;
- who joins: the clients do not register one by one; the host registers once, for all of them
  (``PopulationMembership``), and the session starts;
- who answers for whom: every client of the population is the host's (``PopulationHosts``).

The columns learn which clients' updates were accepted when each round's training ends. Observers
(CSV files, MLflow, the dashboard) see events of the sampled clients only, exactly as they would
without a population, and so write rows only for clients that trained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from fedhive.core.bodies import (
    EnableBody,
    Member,
    PartialBody,
    RegisterBody,
    RegisteredBody,
    StopBody,
    parse_body,
)
from fedhive.core.envelope import Kind, Message
from fedhive.errors import ProtocolError
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client_membership import ClientMembership
from fedhive.runtime.downstream import Downstream
from fedhive.runtime.hosted import HostDirectory
from fedhive.runtime.population import Population, PopulationRegistry
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.round_state import RoundState
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.sampling import ClientSampling
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.coordinator")


class PopulationHosts(HostDirectory):
    """Every client of the population is its host's; any other client is recorded as usual."""

    def __init__(self, population: Population) -> None:
        super().__init__()
        self.population = population

    def host_of(self, client_id: str) -> str | None:
        if self.population.index_of(client_id) is not None:
            return self.population.host
        return super().host_of(client_id)

    def split(self, clients: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        return [], {self.population.host: list(clients)} if clients else {}

    def answer_of(self, msg: Message) -> tuple[list[Member], list[tuple[str, str]]]:
        """As ``HostDirectory.answer_of``, each named client's host asked of ``host_of``."""
        body = parse_body(PartialBody, msg)
        members, failures = body.member_list(), body.failure_list()
        named = [m.client_id for m in members] + [c for c, _ in failures]
        if any(self.host_of(c) != msg.sender for c in named):
            raise ProtocolError(f"{msg.sender} is not the host of every client its partial names")
        return members, failures


class PopulationDownstream(Downstream):
    """A ``Downstream`` whose participants are a ``Population``: drawn from columns, enabled and
    stopped through its host."""

    def __init__(
        self, config: SessionConfig, transport: Transport, bus: EventBus, executor: Executor, population: Population
    ) -> None:
        super().__init__(config, transport, bus, executor, registry=PopulationRegistry(population))
        self.population = population
        self.hosts = self.collector.hosts = PopulationHosts(population)
        self._drawn: dict[str, int] = {}  # the last draw's clients -> their index (their seeds)

    def round_collected(self, r: RoundState) -> None:
        """The columns of the clients whose update was accepted."""
        if r.accepted:
            drawn = self._drawn
            self.population.record(r.round, [drawn[c] for c in r.accepted if c in drawn])

    def index(self) -> dict[str, int]:
        """The position of each client of the last draw (``select``): a round needs no others'."""
        return self._drawn

    def select(self, rnd: int, attempt: int, sampling: ClientSampling | None = None) -> list[str] | str:
        pop, config = self.population, self.config
        online = pop.online_count()
        if online < config.round_floor():
            name = "min_round_clients" if config.min_round_clients else "min_clients"
            return f"round {rnd}: only {online} clients are ONLINE, fewer than {name}={config.round_floor()}"
        rng = np.random.default_rng([config.seed, rnd, attempt])
        if sampling is not None and sampling.rate < 1:
            indices = pop.poisson(sampling.rate, rng)
        else:
            indices = pop.choose(config.selection_size(online), rng)
        selected = pop.ids(indices)
        self._drawn = dict(zip(selected, indices.tolist(), strict=True))
        return selected

    def select_evaluation(self, rnd: int) -> list[str]:
        """A ``fraction_evaluate`` share of the population, at most ``max_clients`` of them: a
        population's evaluation asks no more clients than a round trains."""
        pop, config = self.population, self.config
        online = pop.online_count()
        k = min(online, max(1, math.ceil(config.fraction_evaluate * online)))
        if config.max_clients is not None:
            k = min(k, config.max_clients)
        return pop.ids(pop.choose(k, np.random.default_rng([config.seed, rnd, 1])))

    async def enable(self, participants: list[str], enable: EnableBody) -> None:
        """ENABLE to the host, once for every client; the population's column says TRAINING."""
        if self.population.host not in self.members:
            self.members.append(self.population.host)
        self.population.set_all(PeerStatus.TRAINING)
        body = enable.to_body()
        await self.send_all(participants, lambda _c: self.message(Kind.ENABLE, body=body))

    def release(self) -> None:
        self.population.set_all(PeerStatus.ONLINE)

    async def stop_all(self, reason: str | None = None) -> None:
        """STOP to the host, which answers for every client."""
        body = None if reason is None else StopBody.model_construct(reason=reason[:1000]).to_body()
        await self.send_all(list(self.members) or [self.population.host], lambda _c: self.message(Kind.STOP, body=body))
        if reason is None:
            self.release()

    def alive(self) -> list[str]:
        return list(self.members)


class PopulationMembership(ClientMembership):
    """Clients of a population: its host registers once for all of them, and the session starts."""

    def __init__(self, down: PopulationDownstream, *, on_ready: Callable[[], Awaitable[None]]) -> None:
        super().__init__(down, on_late_joiner=_no_late_joiners, on_ready=on_ready)
        self.population = down.population
        self._host_registered = False

    def ready(self) -> bool:
        return self._host_registered

    def not_ready_reason(self) -> str:
        timeout = self.down.config.registration_timeout_s
        return f"the host of the population ({self.population.host}) did not register within {timeout:.0f} s"

    async def _on_register(self, msg: Message) -> None:
        down = self.down
        parse_body(RegisterBody, msg)  # a well-formed REGISTER, or ProtocolError
        if msg.sender != self.population.host:
            raise ProtocolError(f"{msg.sender} is not the host of this session's population")
        reply = RegisteredBody.model_construct(heartbeat_interval_s=None, heartbeat_timeout_s=None)
        await down.send(msg.sender, down.message(Kind.REGISTERED, body=reply.to_body()))
        if not self._host_registered:
            self._host_registered = True
            await self._on_ready()


async def _no_late_joiners(client: str) -> None:
    log.warning("%s joined a population's session late: ignored", client)
