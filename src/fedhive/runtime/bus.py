"""The event bus of a node (DESIGN.md section 3).

Handlers are registered per event type and run one at a time on the node's event loop, so they
are the single writer of the node's state and need no locks. Events emitted by handlers (or by
timers and worker threads) go to an unbounded internal queue and are dispatched before the next
external input; external input (messages off the transport) enters through ``submit``, which
waits when the bounded input queue is full so a flood of messages slows its sender down instead
of filling memory. Observers (persistence, tracking, progress display) are just more handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger("fedhive.bus")

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None] | None]


class BusStopped(Exception):
    """Raised by ``submit`` once the bus has stopped."""


class EventBus:
    def __init__(self, *, input_size: int = 16) -> None:
        self._handlers: dict[type, list[Handler]] = {}
        self._resolved: dict[type, list[Handler]] = {}
        self._internal: deque[object] = deque()
        self._input: asyncio.Queue[object] = asyncio.Queue(input_size)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopped = False
        self._stop_error: BaseException | None = None

    def on(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        """Call ``handler`` for every event of ``event_type`` (or a subclass), in registration order."""
        self._handlers.setdefault(event_type, []).append(handler)
        self._resolved.clear()

    def emit(self, event: object) -> None:
        """Queue an event from the loop's own thread (handlers, timers). After ``stop`` it is still
        dispatched if it was emitted by a handler during the final drain (e.g. SessionCompleted)."""
        self._internal.append(event)
        self._wake.set()

    def emit_threadsafe(self, event: object) -> None:
        """Queue an event from any thread (a worker thread, or the loop's own for inline jobs)."""
        loop = self._loop
        if threading.get_ident() == self._loop_thread:
            self.emit(event)
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.emit, event)

    def call_later(self, delay: float, event: object) -> asyncio.TimerHandle:
        """Emit ``event`` after ``delay`` seconds; cancel the handle to call it off."""
        return asyncio.get_running_loop().call_later(delay, self.emit, event)

    async def submit(self, event: object) -> None:
        """Queue external input, waiting while the input queue is full."""
        if self._stopped:
            raise BusStopped
        await self._input.put(event)
        self._wake.set()

    def stop(self, error: BaseException | None = None) -> None:
        """End ``run`` once the internal events already emitted are handled; no more external input
        is taken. With ``error``, ``run`` raises it."""
        self._stopped = True
        self._stop_error = error
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def run(self) -> None:
        """Dispatch until ``stop``. A handler's exception ends the run and propagates."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        while not self._stopped:
            if self._internal:
                event = self._internal.popleft()
            elif not self._input.empty():
                event = self._input.get_nowait()
            else:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.dispatch(event)
            # Drop the reference before waiting again: an idle node would otherwise keep its last
            # event alive, and with it a whole model update (100 MB for a 25M-parameter model).
            del event
        # Facts emitted together with the stop (the last RoundCompleted, SessionCompleted) still
        # reach their observers: a run directory must hold the final model.
        while self._internal:
            await self.dispatch(self._internal.popleft())
        if self._stop_error is not None:
            raise self._stop_error

    async def dispatch(self, event: object) -> None:
        for handler in self._handlers_for(type(event)):
            result = handler(event)
            if inspect.isawaitable(result):
                await result

    def _handlers_for(self, cls: type) -> list[Handler]:
        found = self._resolved.get(cls)
        if found is None:
            found = [h for base in cls.__mro__ for h in self._handlers.get(base, ())]
            self._resolved[cls] = found
        return found
