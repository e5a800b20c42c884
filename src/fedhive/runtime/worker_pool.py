"""Worker processes that train a simulation's virtual clients on every core (or GPU).

Why processes: a client's training is Python and numpy or torch code that holds the GIL for much
of its time, so threads would not use a second core. Each worker (``runtime.training_worker``) is
a fresh interpreter (``subprocess`` + ``exec``, like multiprocessing's *spawn*): never a *fork* of
this process, whose BLAS, torch and asyncio threads are already running and whose locks a forked
child could inherit held. A worker loads the app once, by reference (``AppSource``), and serves
tasks until the simulation ends.

What travels where:

- the round's global model: written once per round into a shared buffer that every worker maps
  (``runtime.shared_params``; ``publish``);
- each client's update: written by its worker into one of a few update slots, folded by the
  simulation straight from there; the slots are reused, and as many as 64 MiB hold (at least one
  per worker plus one), so memory does not grow with the number of clients;
- tasks and answers: small JSON frames over a socket per worker (``runtime.worker_frames``),
  with a client's ``ctx.state`` as bytes when it has one; a round's outcomes come back in the
  order of its jobs (``runtime.worker_batch``), the order in which they are folded.

Failures stay bounded: a worker that dies (killed, out of memory, a crash in native code) fails
the clients it held, with the reason, and is replaced; a task running past the session's round
deadline gets its worker killed; a worker that cannot load the app fails the start in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import weakref
from collections.abc import Sequence
from typing import Any

from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import AppError
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.shared_params import ParamLayout, SharedBuffer
from fedhive.runtime.worker_batch import Batch, Job, Outcome, Task
from fedhive.runtime.worker_frames import FrameError, encode, read_frame, send_with_fds
from fedhive.runtime.worker_process import (
    STARTUP_TIMEOUT_S,
    AppSource,
    app_source,
    confirmed,
    early_source,
    exit_of,
    kill_all,
    reap,
    spawn,
)
from fedhive.runtime.worker_startup import Events, WorkerHandle, on_startup_frame, wait_until_ready
from fedhive.runtime.worker_timeline import mark

__all__ = ["AppSource", "Batch", "Job", "Outcome", "WorkerPool", "app_source", "early_source"]

log = logging.getLogger("fedhive.workers")

DEPTH = 2  # tasks a worker holds: the one it trains and the next, so it never waits for us
SLOT_BUDGET_BYTES = 64 * 1024 * 1024  # update slots beyond one per worker (plus one), for small models
MAX_SLOTS = 1024


class WorkerPool:
    """``len(devices)`` worker processes, launched at once (or, ``adaptive``, when the simulation
    finds its clients slow enough to be worth them: ``parallel_host``); ``start`` shares the
    model's buffers with them. One batch of jobs at a time; every wait is bounded."""

    def __init__(
        self,
        source: AppSource,
        devices: Sequence[str | None],
        *,
        adaptive: bool = False,
        log_level: int | None = None,
    ) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise AppError("worker processes need a POSIX system: run with --workers 1")
        self.source = source
        self.adaptive = adaptive
        self._devices = list(devices)
        self._log_level = log_level if log_level is not None else logging.getLogger("fedhive").getEffectiveLevel()
        self._workers: list[WorkerHandle] = []
        self._procs: list[subprocess.Popen[bytes]] = []  # every worker ever started, for the last resort:
        weakref.finalize(self, kill_all, self._procs)  # killed at exit if the pool was never closed
        self._events: Events | None = None
        self._layout: ParamLayout | None = None
        self._model: SharedBuffer | None = None
        self._slots: SharedBuffer | None = None
        self._free: list[int] = []
        self._slot_views: list[Params] = []
        self._session: SessionConfig | None = None
        self._session_frame = b""
        self._task_timeout_s = 300.0
        self._published: Params | None = None
        self._gen = 0
        self._ids = itertools.count()
        self._batch: Batch | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self.busy_s = 0.0  # the workers' CPU time in their tasks (the app's train or evaluate), summed
        if not adaptive:
            self.launch()

    @property
    def size(self) -> int:
        return len(self._devices)

    def launch(self) -> None:
        """Start the worker processes (they load the app at once; ``start`` waits for them)."""
        if not self._workers and not self._closed:
            self._workers = [self._spawn(n) for n in range(len(self._devices))]

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.proc.pid for w in self._workers if w.alive]

    def _spawn(self, number: int) -> WorkerHandle:
        proc, sock = spawn(self.source, number, self._devices[number], self._log_level)
        self._procs.append(proc)
        return WorkerHandle(number, proc, sock)

    # -- start and stop -----------------------------------------------------------------------

    def adopt(self, loaded: LoadedApp) -> bool:
        """A pool launched from an ``early_source``, before this process loaded the app: whether
        ``loaded`` is the app its workers load (then their digests are checked against it at
        ``start``); False: close the pool and train here."""
        if self.source.digest:
            return self.source.digest == loaded.digest
        checked = confirmed(self.source, loaded)
        if checked is None:
            return False
        self.source = checked
        return True

    async def start(self, spec: ParamSpec) -> None:
        """Share the model's buffers with every worker and wait (bounded) until each has loaded
        the app; ``AppError`` in one line if one cannot."""
        if not self.source.digest:
            raise AppError("worker processes launched before the app was loaded: adopt() it first")
        self.launch()
        self._events = asyncio.Queue()
        layout = self._layout = ParamLayout.of(spec)
        self._model = SharedBuffer(layout.nbytes, name="fedhive-global-model")
        slots = slot_count(layout.nbytes, self.size)
        self._slots = SharedBuffer(layout.nbytes, slots, name="fedhive-updates")
        self._free = list(range(slots - 1, -1, -1))
        self._slot_views = [layout.views(self._slots.map, i) for i in range(slots)]
        for w in self._workers:
            await self._attach(w)
        await wait_until_ready(self._workers, self._events, self.source.digest)
        mark("workers-ready")

    def start_soon(self, spec: ParamSpec) -> None:
        """``start`` in the background (an adaptive pool: training goes on meanwhile); ``started``
        tells when it is done."""
        if self._starting is None:
            self._starting = asyncio.create_task(self.start(spec), name="fedhive-workers-start")

    def started(self) -> bool:
        """Whether a ``start_soon`` is done; raises what made it fail."""
        return self._starting is not None and self._starting.done() and self._starting.result() is None

    async def _attach(self, w: WorkerHandle) -> None:
        """The shared buffers (as descriptors, before asyncio owns the socket), then the streams."""
        assert self._layout is not None and self._model is not None and self._slots is not None
        header = {"spec": self._layout.spec.to_json(), "slots": self._slots.size // self._layout.nbytes}
        with contextlib.suppress(OSError):  # it has exited already: what it said is still there to read
            send_with_fds(w.sock, header, [self._model.fd, self._slots.fd])
        reader, w.writer = await asyncio.open_unix_connection(sock=w.sock)
        w.started = asyncio.get_running_loop().time()
        w.reader = asyncio.create_task(self._read(w, reader), name=f"fedhive-worker-{w.number}")
        if self._session_frame:
            w.writer.write(self._session_frame)

    async def _read(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        assert self._events is not None
        try:
            while (frame := await read_frame(reader)) is not None:
                self._events.put_nowait((w, frame))
        except (FrameError, OSError) as exc:
            log.warning("worker %d: %s", w.number, exc)
        self._events.put_nowait((w, None))

    async def aclose(self) -> None:
        """Stop every worker: each exits when its socket closes; one still busy after a few
        seconds is killed. Bounded."""
        if self._closed:
            return
        self._closed = True
        starting = self._starting
        if starting is not None:
            starting.cancel()
            await asyncio.wait([starting])
            if not starting.cancelled():
                starting.exception()  # the session is over: why the workers had not started is moot
        for w in self._workers:
            if w.reader is not None:
                w.reader.cancel()
            if w.writer is not None:
                w.writer.close()
            else:
                w.sock.close()
        await asyncio.to_thread(reap, self._procs)
        self._release_buffers()

    def close(self) -> None:
        """``aclose`` for a caller without an event loop (the pool was never started, or its loop is gone)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.alive = False
            if w.writer is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: the transport went with it
                    w.writer.close()
            w.sock.close()
        reap(self._procs)
        self._release_buffers()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release_buffers(self) -> None:
        self._slot_views = []
        for buf in (self._model, self._slots):
            if buf is not None:
                buf.close()

    # -- rounds -------------------------------------------------------------------------------

    def enable(self, session: SessionConfig) -> None:
        """The session's settings, to every worker (and to any that replaces one later)."""
        if session is self._session:
            return
        self._session = session
        self._task_timeout_s = session.round_timeout_s
        self._session_frame = encode({"op": "session", "config": session.model_dump_json()})
        for w in self._workers:
            if w.alive and w.writer is not None:
                w.writer.write(self._session_frame)

    async def publish(self, params: Params) -> None:
        """Write the global model the next jobs train from, once for all workers; first waits
        (bounded by the task deadline) for tasks still reading the previous one."""
        if params is self._published:
            return
        while any(w.inflight for w in self._workers):
            await self.pump()
        assert self._layout is not None and self._model is not None
        mark("publish")
        self._layout.write(self._model.map, params)
        self._published = params
        self._gen += 1

    def batch(self, jobs: Sequence[Job], *, within_s: float | None = None) -> Batch:
        """``jobs`` for the workers; those not done ``within_s`` from now fail (a worker still
        training one then is stopped): a round's answers must reach the coordinator before its
        own deadline, and one client that never ends must not hold the others' partial back."""
        if self._batch is not None:
            self._batch.close()
        deadline = None if within_s is None else asyncio.get_running_loop().time() + within_s
        self._batch = Batch(self, list(jobs), deadline)
        return self._batch

    def dispatch(self, batch: Batch) -> None:
        """Hand out the batch's next jobs, in order, to the least busy workers, while slots last."""
        if batch.pending and batch.deadline is not None and asyncio.get_running_loop().time() >= batch.deadline:
            self._fail_pending(batch, "its turn came after the round's deadline")
        while batch.pending:
            live = [w for w in self._workers if w.alive and w.ready]
            ready = [w for w in live if len(w.inflight) < DEPTH]
            if not ready:
                break
            index = batch.pending[0]
            job = batch.jobs[index]
            w = min(ready, key=lambda x: len(x.inflight))
            if w.inflight and len(batch.pending) <= len(live):
                break  # the round's last jobs: each to whichever worker is free first, none queued behind another
            slot = None
            if job.op == "fit":
                if not self._free:
                    break  # every slot holds an update not folded yet: wait for the fold
                slot = self._free.pop()
            batch.pending.popleft()
            task = next(self._ids)
            header = {"op": job.op, "task": task, "client": job.index, "id": job.client_id, "gen": self._gen}
            header |= dict(job.fields)
            header["slot"] = slot
            assert w.writer is not None
            w.writer.write(encode(header, job.state))
            w.inflight[task] = Task(batch, index, slot, asyncio.get_running_loop().time())
        if batch.pending and not any(w.alive for w in self._workers):
            self._fail_pending(batch, "no worker process is left to take it")

    def _fail_pending(self, batch: Batch, why: str) -> None:
        for index in batch.pending:
            batch.done[index] = Outcome(batch.jobs[index].client_id, why)
        batch.pending.clear()

    async def pump(self) -> None:
        """Wait for one answer or death, or for the earliest deadline (then kill who is past it)."""
        assert self._events is not None
        loop = asyncio.get_running_loop()
        deadline = self._next_deadline()
        try:
            async with asyncio.timeout_at(deadline):
                w, frame = await self._events.get()
        except TimeoutError:
            self._kill_overdue(loop.time())
            return
        if frame is None:
            await self._bury(w)
        elif not w.ready:
            on_startup_frame(w, frame[0], self.source.digest)
            if not w.alive:
                log.warning("a replacement worker process could not load the app: %s", w.kill_reason)
        else:
            self._on_answer(w, *frame)

    def _next_deadline(self) -> float | None:
        times = [t.due(self._task_timeout_s) for w in self._workers for t in w.inflight.values()]
        times += [w.started + STARTUP_TIMEOUT_S for w in self._workers if w.alive and not w.ready]
        return min(times) if times else None

    def _kill_overdue(self, now: float) -> None:
        for w in self._workers:
            if not w.alive:
                continue
            if any(now >= t.due(self._task_timeout_s) for t in w.inflight.values()):
                w.overdue = True
                w.proc.kill()
            elif not w.ready and now >= w.started + STARTUP_TIMEOUT_S:
                w.kill_reason = "a replacement worker did not load the app in time"
                w.proc.kill()

    def _on_answer(self, w: WorkerHandle, header: dict[str, Any], blob: bytes) -> None:
        task = w.inflight.pop(int(header.get("task", -1)), None)
        if task is None:
            log.warning("worker %d answered a task it was not given", w.number)
            return
        self.busy_s += float(header.get("busy_s", 0.0))
        update = self._slot_views[task.slot] if task.slot is not None else None
        outcome = Outcome.from_answer(task.batch.jobs[task.job].client_id, header, blob, update)
        if outcome.params is not None:
            outcome.slot = task.slot
        elif task.slot is not None:  # no update in it: free at once
            self.release(task.slot)
        if task.batch.closed:
            if outcome.slot is not None:
                self.release(outcome.slot)
            return
        task.batch.done[task.job] = outcome

    async def _bury(self, w: WorkerHandle) -> None:
        """A worker's socket closed: it died. Its clients fail with the reason; a worker that had
        loaded the app is replaced."""
        w.alive = False
        how = await exit_of(w.proc)
        if w.inflight:
            log.warning("worker %d died (%s) holding %d clients", w.number, how, len(w.inflight))
        for task in w.inflight.values():
            if task.slot is not None:
                self.release(task.slot)
            if not task.batch.closed:
                job = task.batch.jobs[task.job]
                doing = "training" if job.op == "fit" else "evaluating"
                if w.overdue:
                    why = f"still {doing} it at the round's deadline: its worker process was stopped"
                else:
                    why = f"its worker process died ({how}) while {doing} it"
                task.batch.done[task.job] = Outcome(job.client_id, why)
        w.inflight.clear()
        if w.writer is not None:
            w.writer.close()
        if w.ready and not self._closed:
            try:
                fresh = self._spawn(w.number)
            except AppError as exc:
                log.warning("cannot replace worker %d: %s", w.number, exc)
                return
            self._workers[w.number] = fresh
            await self._attach(fresh)

    def release(self, slot: int) -> None:
        self._free.append(slot)


def slot_count(model_bytes: int, workers: int) -> int:
    """Update slots: as many as the byte budget allows (at most ``MAX_SLOTS``), so that while one
    client at the head of the order is slow (or its worker gets no core for a while) the other
    workers go on ahead; never fewer than one per worker plus one."""
    return max(workers + 1, min(MAX_SLOTS, SLOT_BUDGET_BYTES // max(1, model_bytes)))
