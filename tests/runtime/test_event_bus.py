"""The event bus: handlers run one at a time, emitted events come before the next input, and input
handed over while the bus is idle is handled at once in the submitter's task."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from fedhive.runtime.bus import BusStopped, EventBus


@dataclass(frozen=True)
class In:
    n: int


@dataclass(frozen=True)
class Out:
    n: int


async def started(bus: EventBus) -> asyncio.Task[None]:
    task = asyncio.create_task(bus.run())
    await asyncio.sleep(0)  # let it park, waiting for input
    return task


async def test_input_while_idle_is_handled_before_submit_returns_with_what_it_emits() -> None:
    bus, seen = EventBus(), []

    def handle(e: In) -> None:
        seen.append(e)
        bus.emit(Out(e.n))

    bus.on(In, handle)
    bus.on(Out, seen.append)
    run = await started(bus)
    await bus.submit(In(1))
    assert seen == [In(1), Out(1)]
    bus.stop()
    await run


async def test_handlers_never_overlap_and_emitted_events_come_before_later_input() -> None:
    bus, order, active = EventBus(), [], [0]

    async def slow(e: In) -> None:
        active[0] += 1
        assert active[0] == 1, "two handlers ran at once"
        order.append(e)
        bus.call_later(0, Out(e.n))  # fires while this handler still waits
        await asyncio.sleep(0.01)
        bus.emit(Out(-e.n))
        active[0] -= 1

    all_out = asyncio.Event()  # the four Out events: each handler's two

    def fast(e: Out) -> None:
        assert active[0] == 0, "a timer's event ran inside another handler"
        order.append(e)
        if sum(isinstance(o, Out) for o in order) == 4:
            all_out.set()

    bus.on(In, slow)
    bus.on(Out, fast)
    run = await started(bus)
    await asyncio.gather(bus.submit(In(1)), bus.submit(In(2)))  # the second one queues
    async with asyncio.timeout(30):  # on the events, not a pause: a loaded machine can stall longer
        await all_out.wait()
    bus.stop()
    await run
    assert order[0] == In(1) and set(order[1:3]) == {Out(1), Out(-1)} and order[3] == In(2)
    assert set(order[4:]) == {Out(2), Out(-2)}


async def test_a_handler_error_in_the_submitters_task_ends_the_run_with_it() -> None:
    bus = EventBus()

    def boom(e: In) -> None:
        raise RuntimeError(f"bad {e.n}")

    bus.on(In, boom)
    run = await started(bus)
    with pytest.raises(BusStopped):
        await bus.submit(In(7))
    with pytest.raises(RuntimeError, match="bad 7"):
        await run
    with pytest.raises(BusStopped):
        await bus.submit(In(8))


async def test_stop_from_a_handler_still_delivers_the_facts_emitted_with_it() -> None:
    bus, seen = EventBus(), []

    async def finish(e: In) -> None:
        await asyncio.sleep(0)
        bus.emit(Out(e.n))
        bus.stop()

    bus.on(In, finish)
    bus.on(Out, seen.append)
    run = await started(bus)
    await bus.submit(In(3))
    await run
    assert seen == [Out(3)]


async def test_input_before_run_waits_for_run() -> None:
    bus, seen = EventBus(), []
    bus.on(In, seen.append)
    await bus.submit(In(1))
    assert seen == []
    run = await started(bus)
    await asyncio.sleep(0)
    assert seen == [In(1)]
    bus.stop()
    await run
