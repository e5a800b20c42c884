"""A host (``fedhive client --virtual N --host ID``) trains with one BLAS thread, workers or not.

Its clients train one after another, so OpenBLAS's threads (one per core) only spin between the
calls: ten hosts of bench/workload_app.py on two cores spent about 40 ms of CPU on each 0.4 ms fit,
and a networked round took 20 times simulate's (docs/benchmarks.md, amqp_scale). One thread is
also what simulate and the host's worker processes use: the same bits whatever the worker count.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, cast

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fedhive.cli import client_cmd
from fedhive.runtime.networked import BrokerSettings, ClientSettings
from fedhive.runtime.site_app import SiteApp
from fedhive.runtime.worker_devices import THREAD_VARS


def blas_threads() -> set[int]:
    return {int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.mark.parametrize("workers", [None, 1])
def test_a_host_without_worker_processes_trains_with_one_blas_thread(
    monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    seen: dict[str, Any] = {}

    async def serve(*_args: object, **_kwargs: object) -> int:  # in place of the broker session
        seen["blas"] = blas_threads()
        seen["env"] = os.environ.get("OPENBLAS_NUM_THREADS")
        return 0

    monkeypatch.setattr(client_cmd, "run_client_host", serve)
    # No worker processes: one client in the population, whatever the cores.
    site = SimpleNamespace(loaded=None, node={})
    saved = {var: os.environ.pop(var, None) for var in THREAD_VARS}
    limiter = threadpool_limits(limits=2, user_api="blas")  # as on a 2-core machine by default
    try:
        assert blas_threads() == {2}
        hosted = [(b"c" * 32, cast(SiteApp, site))]
        settings, options = cast(BrokerSettings, None), cast(ClientSettings, None)  # unused: no broker here
        client_cmd.run_host("host-1", b"k" * 32, hosted, settings, options, workers=workers, first=0, population=1)
    finally:
        limiter.restore_original_limits()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    assert seen == {"blas": {1}, "env": "1"}
