"""An executor that runs each job at once in the caller's thread.

For the in-process simulation only. There, every virtual client's training would run in one
shared worker thread anyway (to keep runs reproducible), and handing each job to that thread costs
more than many small jobs themselves: numpy releases and re-takes the GIL around every call, and
with the event loop busy handling the previous client's messages a 1 ms fit took 2.2 ms (see
bench/simulate_overhead.py). Running jobs inline removes the contention. The loop is blocked while
a job runs, which is harmless when the process has no network peers to answer; nodes that talk to
a broker keep a real worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class InlineExecutor(Executor):
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


async def run_job(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """``await loop.run_in_executor(executor, fn, *args)``, but an ``InlineExecutor``'s job runs
    here and now: handing its finished future back through the loop costs a self-pipe write and
    a wake-up (tens of microseconds) for nothing."""
    if isinstance(executor, InlineExecutor):
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
