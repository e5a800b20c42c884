"""The host of a simulated population: a ``ClientHost`` whose clients exist only while sampled.

A ``ClientHost`` holds a ``HostedClient`` (and its trainer) per client for the whole session. A
population's host holds none: it registers once, for all of them (``population_node``), and at
each TRAIN (or EVALUATE) it makes the named clients, from their index, through ``sites`` (a
``SiteApp`` per client, whose ``ctx.node`` says ``partition_id``, ``num_partitions`` and
``population``: the app's own data loader takes it from there), lets the host's training run
them as it runs any hosted client (in this process or in worker processes, the same chunks and
the same bits), and drops them when the round's answer is out.

What outlives a round is the ``ctx.state`` of the clients that keep one, and only theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fedhive.app.learner import Trainer
from fedhive.core.bodies import EvaluateBody, RegisterBody, TrainBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import AppError, FedhiveError, TransportError
from fedhive.runtime.client_host import ClientHost, HostedClient, HostTraining
from fedhive.runtime.population import Population
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.client_host")

SiteOf = Callable[[int, str], SiteApp]  # (index, client id) -> that client's app at its site


class PopulationHost(ClientHost):
    """Answers the coordinator for every client of ``population``; ``config`` is the session the
    clients' trainers are made for (``SiteApp.trainer_for``), as ``plan_simulation`` makes them."""

    def __init__(
        self,
        host_id: str,
        transport: Transport,
        population: Population,
        sites: SiteOf,
        config: SessionConfig,
        *,
        training: HostTraining | None = None,
        register_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(host_id, transport, [], training=training, register_timeout_s=register_timeout_s)
        self.population = population
        self._sites_of = sites
        self._session = config
        self._made: dict[str, SiteApp] = {}  # the clients of the message being answered
        self._states: dict[str, dict[str, Any]] = {}  # ctx.state of the clients that keep one
        self.most_made = 0  # the most clients alive at once (a check that they do not pile up)

    async def _register(self, clients: list[str]) -> list[str]:
        """One REGISTER, the host's own, for the whole population."""
        body = RegisterBody.model_construct(num_examples=0)
        try:
            await self.transport.send(self._coordinator, make(Kind.REGISTER, self.host_id, body=body.to_body()))
        except TransportError:
            return [self.host_id]
        return []

    async def _train(self, msg: Message) -> None:
        named = [client for client, _seed in parse_body(TrainBody, msg).seeds()]
        self._make(named)
        try:
            await super()._train(msg)
        finally:
            self._drop()

    async def _evaluate(self, msg: Message) -> None:
        self._make(parse_body(EvaluateBody, msg).clients or [])
        try:
            await super()._evaluate(msg)
        finally:
            self._drop()

    def _make(self, named: Sequence[str]) -> None:
        """The named clients of this population, made from their index; others are left out (the
        host answers that it does not host them, and the coordinator counts them missing)."""
        hosted, pop = self._clients, self.population
        for cid in named:
            index = pop.index_of(cid)
            if index is None or cid in self._made:
                continue
            site = self._sites_of(index, cid)
            state = self._states.get(cid)
            if state is not None:
                site.ctx.state = state
            self._made[cid] = site
            hosted.position[cid] = index
            trainer: Trainer
            try:
                trainer = site.trainer_for(self._session)
            except FedhiveError as exc:  # the app refuses the session: this client's failure
                hosted.unfit[cid] = str(exc)
                trainer = _Refused(str(exc))
            hosted.by_id[cid] = HostedClient(cid, trainer, int(pop.num_examples[index]))
        self.most_made = max(self.most_made, len(self._made))

    def _drop(self) -> None:
        """Forget the clients made for the message just answered, but for the state they keep."""
        hosted = self._clients
        for cid, site in self._made.items():
            if site.ctx.state:
                self._states[cid] = site.ctx.state
            else:
                self._states.pop(cid, None)
            hosted.by_id.pop(cid, None)
            hosted.position.pop(cid, None)
            hosted.unfit.pop(cid, None)
        self._made.clear()


class _Refused:
    """The trainer of a client whose app refused the session: every call fails with why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def initial_params(self, *_: Any) -> Any:
        raise AppError(self.reason)

    def fit(self, *_: Any) -> Any:
        raise AppError(self.reason)

    def evaluate(self, *_: Any) -> Any:
        raise AppError(self.reason)
