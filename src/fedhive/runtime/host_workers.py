"""Worker processes for a networked ``ClientHost`` (``fedhive client --virtual N --host ID --workers W``).

The same ``WorkerPool`` and ``parallel_host.PoolTraining`` as ``fedhive simulate``: the host's
clients train on every core, their updates are folded here in the coordinator's order, so the
partial sums are the same bits whatever the number of workers. One difference: a networked host
learns the session's model only from ENABLE, so a pool of a fixed size (``--workers W``) shares
the model's buffers with its workers at the first TRAIN or EVALUATE rather than before the
session; an adaptive one (no ``--workers``) starts when its clients prove slow enough, as in
simulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params, ParamSpec
from fedhive.runtime.client_host import Deliver, Evaluated, HostedClients, TrainRound
from fedhive.runtime.parallel_host import PoolTraining
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.worker_devices import cores, visible_gpus, worker_devices
from fedhive.runtime.worker_pool import WorkerPool, app_source

# Site settings that say which part of the data a client holds: a worker is told its client's
# ``partition_id`` and ``num_partitions`` instead.
_PART_KEYS = ("part", "partition_id", "num_partitions")


def host_pool(
    requested: int | None, loaded: LoadedApp, node: Mapping[str, Any], population: int
) -> tuple[WorkerPool | None, str | None]:
    """The worker processes of a host whose clients run ``loaded`` with the site settings
    ``node`` (any one client's), in a population of ``population`` parts; or None, with why when
    more than one worker was asked for."""
    devices = worker_devices(requested, cores=cores(), gpus=visible_gpus(node.get("device")), clients=population)
    if len(devices) == 1:
        return None, None
    base = {k: v for k, v in node.items() if k not in _PART_KEYS}
    source = app_source(loaded, base, population)
    if source is None:
        return None, f"app {loaded.name!r} is not one a worker process can load by reference: trained in this process"
    return WorkerPool(source, devices, adaptive=requested is None), None


class PoolOnEnable:
    """``PoolTraining`` for a host that learns the model at ENABLE: a fixed-size pool is
    started at the first task, with that task's model."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._training = PoolTraining(pool)
        self._started = pool.adaptive  # an adaptive pool is started by PoolTraining itself

    async def _start(self, spec: ParamSpec) -> None:
        if not self._started:
            self._started = True
            await self.pool.start(spec)

    async def train_items(self, clients: HostedClients, work: TrainRound, deliver: Deliver) -> None:
        await self._start(work.spec)
        await self._training.train_items(clients, work, deliver)

    async def evaluate_named(
        self, clients: HostedClients, config: SessionConfig, params: Params, named: list[str]
    ) -> Evaluated:
        await self._start(params.spec)
        return await self._training.evaluate_named(clients, config, params, named)
