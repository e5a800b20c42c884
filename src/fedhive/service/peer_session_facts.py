"""What a decentralised session run by ``fedhive serve`` tells its observers.

``PeerSession`` records what the peers report; here the same facts become the events a
coordinator's bus carries (``SessionStarted``, ``UpdateAccepted`` per site and round,
``RoundCompleted``, ``SessionCompleted`` or ``SessionFailedEvent``), on a bus of the session's own,
so that the observers ``SessionManager`` attaches to every session (an MLflow tracker, the
dashboard's live feed) follow this one too.

The server holds no round's model of a decentralised session (its peers do), so the round events
carry empty parameters: a tracker records the session's run with each round's figures (those the
peers report, weighted by examples, with ``digest_agreement`` and ``peers``) and each site's own
figures in its child run. ``SessionCompleted`` carries the final model when a peer handed it over
(``peer_session_model``), so a tracker logs (and registers) it as a star session's.

The bus runs in a task of its own: a slow observer (an MLflow server taking its time) delays what
it records, never the watch, which would otherwise take sites whose reports wait unread for gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from fedhive.core.params import Params
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.peer_orders import PeerProgress
from fedhive.runtime.session_config import SessionConfig

log = logging.getLogger("fedhive.sessions")
NO_MODEL = Params({})  # the server never holds a decentralised session's model


class PeerSessionFacts:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.bus = EventBus()
        self._task: asyncio.Task[None] | None = None
        self._round_at = time.monotonic()

    def started(self, config: SessionConfig, sites: list[str], start_round: int = 1) -> None:
        """The session runs (or is watched again from ``start_round`` after a restart)."""
        if self._task is None:
            self._task = asyncio.create_task(self.bus.run(), name=f"facts-{self.session_id}")
        self._round_at = time.monotonic()
        self.bus.emit(ev.SessionStarted(self.session_id, config.model_dump(), sorted(sites), start_round))

    def round(
        self, rnd: int, reports: Mapping[str, PeerProgress], recorded: Mapping[str, object], selected: int
    ) -> None:
        """Round ``rnd`` as recorded: each site's report, then the round's figures (``recorded``:
        what the database got; its numbers are the round's metrics)."""
        for site, report in sorted(reports.items()):
            # A report carries no update (the peers exchange those among themselves): no bytes.
            self.bus.emit(ev.UpdateAccepted(rnd, site, report.num_examples, dict(report.metrics), 0))
        figures = {k: float(v) for k, v in recorded.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        train = recorded.get("train")
        missing = recorded.get("missing")
        now = time.monotonic()
        self.bus.emit(
            ev.RoundCompleted(
                rnd, NO_MODEL, figures, dict(train) if isinstance(train, dict) else {},
                int(figures.get("peers", len(reports))), selected, sum(r.num_examples for r in reports.values()),
                now - self._round_at, [str(m) for m in missing] if isinstance(missing, list) else [],
            )
        )  # fmt: skip
        self._round_at = now

    def ended(self, rounds: int, failure: str | None, model: Params | None = None) -> None:
        """How the session ended, once the database says so: COMPLETED (``failure`` None) or FAILED;
        ``model``: the one the peers agreed on, if one of them handed it over (``peer_session_model``)."""
        if failure is None:
            self.bus.emit(ev.SessionCompleted(self.session_id, rounds, model if model is not None else NO_MODEL, {}))
        else:
            self.bus.emit(ev.SessionFailedEvent(self.session_id, failure))

    def stop(self) -> None:
        """No more facts: the bus hands the observers what was emitted, then ends."""
        self.bus.stop()

    async def drained(self) -> None:
        """Wait until the observers have had every fact (each of their calls is bounded)."""
        if self._task is None:
            return
        try:
            await asyncio.shield(self._task)
        except Exception as exc:  # an observer's bug: the session is recorded all the same
            log.warning("session %s: an observer failed: %s", self.session_id, exc)
