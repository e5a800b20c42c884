"""How every command runs its coroutine: ``asyncio.run``, with what it leaves behind stopped in
bounded time.

``asyncio.run`` ends by cancelling every task still pending (the AMQP library's own, a node's
timers) once and waiting, with no bound, for all of them to end. On Python 3.11 a task whose
cancellation arrives just as an ``asyncio.wait_for`` inside it completes carries on as if not
cancelled (fixed in 3.12), and such a task, waiting for a message that no longer comes, held a
finished node's process open. So before ``asyncio.run`` gets to them, the tasks the command left
are stopped by ``core.stopping.stop_tasks``: cancelled again on each short wait until they end,
for at most ``TEARDOWN_S``, and any still running then named in one warning line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fedhive.core.stopping import stop_tasks

T = TypeVar("T")

TEARDOWN_S = 10.0


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, whose leftover tasks are stopped in bounded time (see above)."""
    return asyncio.run(_then_stop_the_rest(main))


async def _then_stop_the_rest(main: Coroutine[Any, Any, T]) -> T:
    try:
        return await main
    finally:
        me = asyncio.current_task()
        await stop_tasks([t for t in asyncio.all_tasks() if t is not me], owner="fedhive", timeout_s=TEARDOWN_S)
