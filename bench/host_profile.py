"""Run ``fedhive client ...`` under cProfile in every thread, with a probe of its event loop's lag.

    python bench/host_profile.py OUT.prof client --virtual N --host ID ...   # as bench/amqp_scale.py --host-profile

A host trains its clients on a worker thread, which ``python -m cProfile`` would not see: each
thread gets a profiler of its own here (``threading.setprofile``), all merged into OUT.prof at the
end. A task on the host's event loop sleeps 50 ms at a time and records how late it wakes: the lag
of everything else the loop runs (heartbeats, acknowledgements, sends). OUT.prof.json holds the
process's wall and CPU time and the lag's percentiles.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import sys
import threading
import time
from collections.abc import Coroutine
from types import FrameType
from typing import Any

PROBE_S = 0.05
_profiles: list[tuple[str, cProfile.Profile]] = []
_lags: list[float] = []
_lock = threading.Lock()


def _profile_new_thread(_frame: FrameType, _event: str, _arg: Any) -> None:
    """A thread's first call: its own profiler, which replaces this hook for that thread."""
    profile = cProfile.Profile()
    with _lock:
        _profiles.append((threading.current_thread().name, profile))
    profile.enable()


async def _probe_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(PROBE_S)
        _lags.append(loop.time() - start - PROBE_S)


def _with_probe(run: Any) -> Any:
    def probed(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        async def both() -> Any:
            probe = asyncio.create_task(_probe_lag())
            try:
                return await main
            finally:
                probe.cancel()

        return run(both(), **kwargs)

    return probed


def summary(wall_s: float, cpu_s: float) -> dict[str, Any]:
    lags = sorted(_lags)
    n = len(lags)

    def at(q: float) -> float | None:
        return round(1000 * lags[min(n - 1, int(q * n))], 2) if n else None

    return {"wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "threads": [name for name, _ in _profiles],
            "lag_samples": n, "lag_p50_ms": at(0.5), "lag_p99_ms": at(0.99), "lag_max_ms": at(1.0),
            "lag_over_100ms": sum(lag > 0.1 for lag in lags), "lag_total_s": round(sum(lags), 3)}  # fmt: skip


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    threading.setprofile(_profile_new_thread)
    asyncio.run = _with_probe(asyncio.run)
    from fedhive.cli.main import main as fedhive_main

    own = cProfile.Profile()
    wall, cpu = time.time(), time.process_time()
    own.enable()
    try:
        fedhive_main(argv)
    except SystemExit:
        pass
    finally:
        own.disable()
        wall, cpu = time.time() - wall, time.process_time() - cpu
        stats = pstats.Stats(own)
        for _name, profile in _profiles:
            profile.create_stats()
            stats.add(profile)
        stats.dump_stats(out)
        with open(out + ".json", "w") as f:
            json.dump(summary(wall, cpu), f)


if __name__ == "__main__":
    main()
