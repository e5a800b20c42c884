"""A worker process's start, as its pool sees it: each says it has loaded the app (with the app's
digest, which must be the simulation's) or why it could not, within ``STARTUP_TIMEOUT_S``."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from fedhive.errors import AppError
from fedhive.runtime.worker_batch import Task
from fedhive.runtime.worker_process import STARTUP_TIMEOUT_S, exit_of

Events = asyncio.Queue[tuple["WorkerHandle", tuple[dict[str, Any], bytes] | None]]


@dataclass
class WorkerHandle:
    """One worker process as the pool sees it: its socket, streams, state and the tasks it holds."""

    number: int
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.Task[None] | None = None
    ready: bool = False
    alive: bool = True
    started: float = 0.0
    kill_reason: str | None = None  # why it could not start
    overdue: bool = False  # killed for running past a deadline
    inflight: dict[int, Task] = field(default_factory=dict)


async def wait_until_ready(workers: list[WorkerHandle], events: Events, digest: str) -> None:
    """Until every worker has loaded the app (bounded); ``AppError`` in one line if one cannot."""
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
    while not all(w.ready for w in workers):
        try:
            async with asyncio.timeout_at(deadline):
                w, frame = await events.get()
        except TimeoutError:
            raise AppError(f"the worker processes did not load the app within {STARTUP_TIMEOUT_S:.0f} s") from None
        if frame is None:
            how = await exit_of(w.proc)
            raise AppError(f"a worker process exited while loading the app ({how}); its output is above")
        on_startup_frame(w, frame[0], digest)
        if not w.alive:
            raise AppError(f"a worker process could not load the app: {w.kill_reason}")


def on_startup_frame(w: WorkerHandle, header: dict[str, Any], digest: str) -> None:
    """A worker's first answer: ready (with the digest of the app it loaded) or an error."""
    if "error" in header:
        w.alive, w.kill_reason = False, str(header["error"])
    elif header.get("ready"):
        if header.get("digest") != digest:
            w.alive, w.kill_reason = False, "its copy of the app's code differs from the simulation's"
            w.proc.kill()
        else:
            w.ready = True
