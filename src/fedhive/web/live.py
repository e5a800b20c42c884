"""Fan-out of bus events to browsers: the dashboard's live feed.

An observer like any other (docs/architecture.md, "The event runtime"): ``attach_session`` and ``attach_hub`` register
handlers on a coordinator's or the hub's bus. The handlers only turn an event into a small JSON
dict and append it to each subscriber's queue, so a browser can never slow down a round: the
queues are bounded and a slow (or stalled) browser loses its oldest events, never the node its
newest. Everything runs on the one event loop of ``fedhive serve``, so there are no locks; a
subscriber is woken through an ``asyncio.Event``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus

DEFAULT_QUEUE = 256


class Subscription:
    """One browser's view: the events of one session (or of every session), plus peer events."""

    def __init__(self, feed: LiveFeed, session_id: str | None, maxlen: int) -> None:
        self.session_id = session_id
        self.dropped = 0
        self._feed = feed
        self._queue: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._wake = asyncio.Event()

    def offer(self, item: dict[str, Any]) -> None:
        sid = item.get("session_id")
        if sid is not None and self.session_id is not None and sid != self.session_id:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest itself; counted for the tests
        self._queue.append(item)
        self._wake.set()

    async def next(self, wait_s: float) -> dict[str, Any] | None:
        """The next event, or None after ``wait_s`` seconds (the caller sends a keep-alive)."""
        if not self._queue:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                return None
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        self._feed._subscribers.discard(self)


class LiveFeed:
    def __init__(self, *, queue_size: int = DEFAULT_QUEUE) -> None:
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size

    def subscribe(self, session_id: str | None = None) -> Subscription:
        sub = Subscription(self, session_id, self._queue_size)
        self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, item: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            sub.offer(item)

    # -- observers ----------------------------------------------------------------------------
    def attach_session(self, session_id: str, bus: EventBus, tags: Mapping[str, str] | None = None) -> None:
        """Coordinator facts of one session; the events carry no session id, so it is added here.
        (``tags``: the session's labels, which the page reads from the database when it needs them.)"""

        def on_round(e: ev.RoundCompleted) -> None:
            self.publish(
                {
                    "type": "round",
                    "session_id": session_id,
                    "round": e.round,
                    "metrics": _clean(e.metrics),
                    "train_metrics": _clean(e.train_metrics),
                    "updates": e.num_updates,
                }
            )

        def on_update(e: ev.UpdateAccepted) -> None:
            self.publish(
                {
                    "type": "update",
                    "session_id": session_id,
                    "round": e.round,
                    "client_id": e.client_id,
                    "num_examples": e.num_examples,
                    "metrics": _clean(e.metrics),
                }
            )

        def on_done(e: ev.SessionCompleted) -> None:
            self.publish({"type": "completed", "session_id": session_id, "rounds": e.rounds})

        def on_failed(e: ev.SessionFailedEvent) -> None:
            self.publish({"type": "failed", "session_id": session_id, "reason": e.reason})

        def on_cancelled(e: ev.SessionCancelled) -> None:
            self.publish({"type": "cancelled", "session_id": session_id, "reason": e.reason})

        bus.on(ev.RoundCompleted, on_round)
        bus.on(ev.UpdateAccepted, on_update)
        bus.on(ev.SessionCompleted, on_done)
        bus.on(ev.SessionFailedEvent, on_failed)
        bus.on(ev.SessionCancelled, on_cancelled)

    def attach_hub(self, bus: EventBus) -> None:
        """Platform-wide peer facts: status changes, heartbeats with epoch progress, site announcements."""

        def on_status(e: ev.ClientStatusChanged) -> None:
            self.publish({"type": "peer_status", "client_id": e.client_id, "status": str(e.status)})

        def on_heartbeat(e: ev.HeartbeatReceived) -> None:
            self.publish(
                {
                    "type": "heartbeat",
                    "client_id": e.client_id,
                    "status": str(e.status),
                    "epoch": e.epoch,
                    "epochs": e.epochs,
                    "loss": _num(e.loss),
                    "accuracy": _num(e.accuracy),
                }
            )

        def on_site(e: ev.SiteAnnounced) -> None:
            self.publish({"type": "site", "client_id": e.client_id})  # the page reads what it announced

        bus.on(ev.ClientStatusChanged, on_status)
        bus.on(ev.HeartbeatReceived, on_heartbeat)
        bus.on(ev.SiteAnnounced, on_site)


def _num(value: float | None) -> float | None:
    # JSON has no NaN/inf; a diverged client shows as a gap, not as a broken event stream.
    return float(value) if value is not None and math.isfinite(value) else None


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in metrics.items()}
