"""Claim-checked payloads that a node has received go back to the artifact store once read.

Without this the store would grow by every update of every round (large payloads travel as
references: docs/architecture.md, "Wire protocol"). A node holds a round's claims until the round is aggregated and
then discards them in its aggregation executor, after any fold still queued there (one worker),
so nothing still reads them, and off the event loop (store I/O).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from fedhive.core.envelope import Deferred

log = logging.getLogger("fedhive.claims")


def give_back(executor: Executor, claims: list[Deferred]) -> None:
    """Discard ``claims`` (and empty the list) in ``executor``, behind what is queued there."""
    if not claims:
        return
    taken = list(claims)
    claims.clear()
    try:
        fut = asyncio.get_running_loop().run_in_executor(executor, _discard_all, taken)
    except RuntimeError:  # the executor is shut down: the session is over
        return
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve: never "never retrieved"


def _discard_all(claims: list[Deferred]) -> None:
    for claim in claims:
        try:
            claim.discard()
        except Exception:  # a store error costs disk space, never the session
            log.warning("could not give a claim-checked payload back to the store", exc_info=True)
