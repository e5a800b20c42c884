"""A command's process ends when its work is done, whatever tasks its libraries leave behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from fedhive.cli.event_loop import run_main

# A task left running when the command's coroutine returns that, as Python 3.11's wait_for can
# make any task do, carries on after its first cancellation, then waits for a message that no
# longer comes.
LEFTOVER = textwrap.dedent(
    """
    import asyncio

    async def leftover(started):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # the cancellation is lost
        await asyncio.Event().wait()

    async def command():
        started = asyncio.Event()
        asyncio.create_task(leftover(started))
        await started.wait()
        return "done"
    """
)


@pytest.mark.timeout(60)
def test_a_task_that_outlives_one_cancellation_does_not_hold_the_command() -> None:
    namespace: dict[str, object] = {}
    exec(LEFTOVER, namespace)
    began = time.monotonic()
    assert run_main(namespace["command"]()) == "done"  # type: ignore[operator]
    assert time.monotonic() - began < 10  # cancelled again at once, not at the teardown's bound


def test_plain_asyncio_run_would_hang_on_it() -> None:
    # What run_main guards against, shown in a process of its own (it never ends by itself).
    script = LEFTOVER + "\nprint(asyncio.run(command()))\n"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=5)


def test_the_commands_result_and_errors_pass_through() -> None:
    async def fails() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_main(fails())

    async def answer() -> int:
        return 42

    assert run_main(answer()) == 42
