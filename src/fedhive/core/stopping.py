"""Stopping a node's background tasks without letting one of them hold the node's exit.

A node ends by cancelling its receiver (and timers, keepers) and waiting for them. That wait must be
bounded: Python 3.11's ``asyncio.wait_for``, used inside the AMQP client library, returns its
result and drops a cancellation that arrives just as the awaited operation completes (fixed in
3.12). A receiver caught that way goes back to waiting for the next message, which, once every
other node has finished, never comes: an unbounded ``gather`` on it then keeps the process alive
after its last round. So each task is cancelled again on every short wait until it has ended or
the deadline has passed, and a task still running then is named in one warning line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# How often a task that has not ended is cancelled again: short, so that a swallowed cancellation
# costs a fraction of a second, not the whole deadline.
_RECANCEL_S = 0.2


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None], *, owner: str, timeout_s: float = 10.0) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait until they end, at most ``timeout_s``.

    Their exceptions are retrieved (as ``gather(..., return_exceptions=True)`` does): a task that
    failed while being stopped has nothing left to report to. Returns without raising."""
    all_tasks = [t for t in tasks if t is not None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in all_tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            names = ", ".join(sorted(t.get_name() for t in pending))
            log.warning("%s: %s did not stop within %g s of being cancelled; going on", owner, names, timeout_s)
            break
        _, pending = await asyncio.wait(pending, timeout=min(left, _RECANCEL_S))
    for task in all_tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
