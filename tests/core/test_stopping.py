"""A node's exit is never held by a task that outlives its cancellation."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from fedhive.core.stopping import stop_tasks


async def _receiver_whose_cancel_wait_for_swallows(
    ready: asyncio.Future[int], forever: asyncio.Event, entered: asyncio.Event
) -> None:
    # The shape of a node's receiver: an awaited broker operation, then a wait for the next message.
    entered.set()  # wait_for below runs up to its first suspension in this same step
    await asyncio.wait_for(ready, timeout=60)
    await forever.wait()


async def _cancel_as_the_operation_completes(ready: asyncio.Future[int], task: asyncio.Task[None]) -> None:
    ready.set_result(1)  # the operation completes ...
    task.cancel()  # ... in the same loop step as the node cancels its receiver


async def test_a_receiver_whose_cancellation_was_swallowed_is_stopped_at_once() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[int] = loop.create_future()
    entered = asyncio.Event()
    task = asyncio.create_task(_receiver_whose_cancel_wait_for_swallows(ready, asyncio.Event(), entered))
    await entered.wait()  # the receiver is inside wait_for
    await _cancel_as_the_operation_completes(ready, task)
    if sys.version_info < (3, 12):
        # The bug this guards against: a single cancel is lost and the task waits on.
        _, pending = await asyncio.wait([task], timeout=0.5)
        assert pending == {task}
    started = loop.time()
    await stop_tasks([task], owner="test", timeout_s=30)
    assert task.cancelled()
    assert loop.time() - started < 5  # re-cancelled on the first short wait, not at the deadline


async def test_a_task_that_never_ends_is_named_and_left_after_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    released = False
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not released:  # swallows every cancellation until the test lets it go
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn-receive")
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="fedhive.core.stopping"):
        await stop_tasks([task, None], owner="node-a", timeout_s=0.5)
    assert not task.done()
    assert "node-a: stubborn-receive did not stop within 0.5 s" in caplog.text
    released = True
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()


async def test_exceptions_of_stopped_tasks_are_retrieved_and_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("lost connection")

    failed = asyncio.create_task(fails())
    await asyncio.wait([failed])
    idle = asyncio.create_task(asyncio.Event().wait())
    await stop_tasks([failed, idle], owner="test", timeout_s=5)
    assert failed.done() and not failed.cancelled()
    assert idle.cancelled()
