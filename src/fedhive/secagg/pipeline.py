"""A secure sum whose cryptography runs beside the clients' training, on the other cores.

In ``simulate`` one process plays every client of a round: it trains them one after the other,
and for each it must also mask the update, one AES-CTR stream per neighbour (``k`` of them, each
as long as the model): for a small model that costs more than the training itself. Both halves
release the GIL where they spend their time (torch's kernels; AES on buffers of 2 KiB and more,
numpy's additions), so the secure sum runs in threads of its own: key agreement and sharing
while the first clients train, then each update's masking (several clients at once, one per
thread) while the next clients train. The round's result is the same: masks and sums are exact
integer arithmetic modulo 2**64, whatever the order.

Each update waits in a queue of at most ``MAX_QUEUED`` until it is masked and added to the
running sum (then dropped): memory does not grow with the number of clients.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np

from fedhive.runtime.worker_devices import cores
from fedhive.secagg.round import LocalSecureSum

MAX_QUEUED = 4

_threads: ThreadPoolExecutor | None = None
_threads_lock = threading.Lock()


def masking_threads() -> Executor:
    """Where this process masks updates: one thread per core, shared by every secure sum and
    client in it (the virtual clients of ``client --virtual`` included), so that masks of several
    clients are expanded at once while the training threads take the GIL. Never the event loop's
    thread: a node masking a large model must still answer its broker's heartbeats."""
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = ThreadPoolExecutor(cores(), thread_name_prefix="fedhive-secagg")
        return _threads


class SecureSumPipeline:
    """``LocalSecureSum``'s ``submit`` and ``finish`` with the work done in ``executor``'s
    threads, which also build the sum (``build``: the key steps; each masking waits for them)."""

    def __init__(self, executor: Executor, build: Callable[[], LocalSecureSum]) -> None:
        self._executor = executor
        self._setup: Future[LocalSecureSum] = executor.submit(build)
        self._queued: deque[Future[None]] = deque()

    def _sum(self) -> LocalSecureSum:
        return self._setup.result()  # raises the key steps' ``SecAggError``

    def failed_early(self) -> BaseException | None:
        """The key steps' error if they have already failed: the round need not train on."""
        return self._setup.exception() if self._setup.done() else None

    def submit(self, client_id: str, vector: np.ndarray) -> None:
        """Queue ``client_id``'s quantised update (this call keeps no reference to it after the
        thread has added it); waits while ``MAX_QUEUED`` are queued; raises what a masking raised."""
        self._queued.append(self._executor.submit(self._mask, client_id, vector))
        while len(self._queued) > MAX_QUEUED:
            self._queued.popleft().result()

    def _mask(self, client_id: str, vector: np.ndarray) -> None:
        self._sum().submit(client_id, vector)

    def finish(self, gone: Callable[[list[str]], Collection[str]]) -> np.ndarray:
        """Every queued update summed, then unmasked; ``gone`` names, from the clients whose
        update is in the sum, those that send no unmasking shares."""
        while self._queued:
            self._queued.popleft().result()
        secure = self._sum()
        return secure.finish(gone(secure.submitted))

    def abandon(self) -> None:
        """The round failed: drop what is queued (the thread finishes what it has begun)."""
        for queued in self._queued:
            queued.cancel()
        self._queued.clear()
