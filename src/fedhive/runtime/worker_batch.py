"""A round's jobs for a simulation's worker processes, and their outcomes in the order of the jobs.

``Batch.next`` gives the outcomes in job order, whatever order the workers finish in: folded in
that order, the sums are those of one process training the clients one after another, bit for
bit (``runtime.parallel_host``). The pool behind a batch (``runtime.worker_pool``) hands out its
jobs, waits for answers, and takes back the update slot of an outcome once the next is asked for.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedhive.core.params import Params


@dataclass(frozen=True)
class Job:
    """One client's task: ``fit`` (``fields``: ``fit``, ``round``) or ``evaluate``."""

    op: str
    index: int  # the client's partition (ctx.node["partition_id"])
    client_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    state: bytes = b""  # its ctx.state (app.state_store bytes), b"" when empty


@dataclass
class Outcome:
    client_id: str
    reason: str | None = None  # why it has no result
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    params: Params | None = None  # a fit's update: views of its slot, valid until the next outcome
    state: bytes | None = None  # its ctx.state after the task (b"": empty); None: unknown, keep it
    slot: int | None = None

    @classmethod
    def from_answer(cls, client_id: str, header: Mapping[str, Any], blob: bytes, update: Params | None) -> Outcome:
        """A worker's answer (``runtime.training_worker``); ``update``: the views of its slot."""
        reason = header.get("reason")
        return cls(
            client_id,
            None if reason is None else str(reason),
            int(header.get("num_examples", 0)),
            {str(k): float(v) for k, v in header.get("metrics", {}).items()},
            update if reason is None else None,
            blob if header.get("state") else b"",
        )


@dataclass
class Task:
    """A job handed to a worker: its batch, its index there, its update slot, when it began."""

    batch: Batch
    job: int
    slot: int | None
    started: float

    def due(self, timeout_s: float) -> float:
        """When it is overdue: ``timeout_s`` (the session's round deadline) after it began, or
        its batch's deadline if that comes first."""
        due = self.started + timeout_s
        return due if self.batch.deadline is None or self.batch.closed else min(due, self.batch.deadline)


class BatchPool(Protocol):
    """What a ``Batch`` needs of its pool."""

    def dispatch(self, batch: Batch) -> None:
        """Hand out the batch's next jobs to workers with room for them."""

    async def pump(self) -> None:
        """Wait (bounded) for one answer, death or deadline."""

    def release(self, slot: int) -> None:
        """Update slot ``slot`` is free again."""


class Batch:
    """A round's jobs for the pool; ``next`` gives their outcomes in order."""

    def __init__(self, pool: BatchPool, jobs: list[Job], deadline: float | None = None) -> None:
        self.pool = pool
        self.jobs = jobs
        self.deadline = deadline  # event-loop time
        self.pending: collections.deque[int] = collections.deque(range(len(jobs)))
        self.done: dict[int, Outcome] = {}
        self.closed = False
        self._next = 0
        self._held: int | None = None

    async def next(self) -> Outcome:
        """The next job's outcome; the previous outcome's update slot is given back first."""
        self._give_back()
        index = self._next
        if index >= len(self.jobs):
            raise IndexError("every job of this batch has its outcome")
        self._next += 1
        while index not in self.done:
            self.pool.dispatch(self)
            if index in self.done:
                break
            await self.pool.pump()
        outcome = self.done.pop(index)
        self._held = outcome.slot
        return outcome

    def close(self) -> None:
        """No more outcomes are wanted: slots come back as their tasks end."""
        self._give_back()
        self.closed = True
        self.pending.clear()
        for outcome in self.done.values():
            if outcome.slot is not None:
                self.pool.release(outcome.slot)
        self.done.clear()

    def _give_back(self) -> None:
        if self._held is not None:
            self.pool.release(self._held)
            self._held = None
