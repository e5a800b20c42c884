"""The event bus of a node (docs/architecture.md, "The event runtime").

Handlers are registered per event type and run one at a time on the node's event loop, so they
are the single writer of the node's state and need no locks. Events emitted by handlers (or by
timers and worker threads) go to an unbounded internal queue and are dispatched before the next
external input; external input (messages off the transport) enters through ``submit``, which
waits when the bounded input queue is full so a flood of messages slows its sender down instead
of filling memory. Observers (persistence, tracking, progress display) are just more handlers.

When the bus is idle (its task waits for input, nothing is queued), ``submit`` handles the event
at once in the submitting task (the node's receiver) instead of queueing it and waking the bus's
task: one task switch less per message, which is a good part of the per-message cost in a
simulation of 1000 clients. Handlers still run one at a time (``_busy`` keeps the bus's task out
meanwhile), and events they emit are still handled before the next external input.
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
_NOTHING = object()  # no event to dispatch now


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
        self._parked = False  # run() waits for input: nothing is being dispatched by its task
        self._busy = False  # a submitter is dispatching in its own task (see ``submit``)
        self._failure: Exception | None = None  # a handler's exception raised in a submitter's task

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
        """Hand over external input: handled at once if the bus is idle, else queued (waiting while
        the input queue is full). Raises ``BusStopped`` once the bus has stopped, or if handling
        the event raised (``run`` then raises that exception)."""
        if self._stopped:
            raise BusStopped
        if self._parked and not self._busy and not self._internal and self._input.empty():
            await self._dispatch_here(event)
            return
        await self._input.put(event)
        self._wake.set()

    async def _dispatch_here(self, event: object) -> None:
        """Dispatch ``event`` and what it emits in the caller's task, as ``run`` would have."""
        self._busy = True
        try:
            await self.dispatch(event)
            del event
            while self._internal and not self._stopped:
                await self.dispatch(self._internal.popleft())
        except Exception as exc:
            # As if the handler had raised in ``run``: the run ends with this exception.
            self._failure = exc
            self._stopped = True
            raise BusStopped from exc
        finally:
            self._busy = False
            if self._internal or not self._input.empty() or self._stopped:
                self._wake.set()  # run() takes over what is left (queued input, a stop)

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
            event: object = _NOTHING
            if self._busy:  # a submitter is dispatching (see ``submit``): wait until it is done
                pass
            elif self._internal:
                event = self._internal.popleft()
            elif not self._input.empty():
                event = self._input.get_nowait()
            if event is _NOTHING:
                self._wake.clear()
                self._parked = True
                try:
                    await self._wake.wait()
                finally:
                    self._parked = False
                continue
            await self.dispatch(event)
            # Drop the reference before waiting again: an idle node would otherwise keep its last
            # event alive, and with it a whole model update (100 MB for a 25M-parameter model).
            del event
        while self._busy:  # a handler running in a submitter's task stopped the bus: let it finish
            self._wake.clear()
            await self._wake.wait()
        if self._failure is not None:
            raise self._failure
        # Facts emitted together with the stop (the last RoundCompleted, SessionCompleted) still
        # reach their observers: a run directory must hold the final model.
        while self._internal:
            await self.dispatch(self._internal.popleft())
        if self._stop_error is not None:
            raise self._stop_error

    async def dispatch(self, event: object) -> None:
        for handler in self._handlers_for(type(event)):
            result = handler(event)
            # Most handlers are plain functions returning None: skip the (slower) awaitable test.
            if result is not None and inspect.isawaitable(result):
                await result

    def _handlers_for(self, cls: type) -> list[Handler]:
        found = self._resolved.get(cls)
        if found is None:
            found = [h for base in cls.__mro__ for h in self._handlers.get(base, ())]
            self._resolved[cls] = found
        return found
