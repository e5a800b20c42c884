"""A simulation's worker processes as processes: how one is started, and how it ended.

A worker is a fresh interpreter, ``python -m fedhive.runtime.training_worker FD``, never a fork of
the simulation (see ``runtime.worker_pool``). Its first frame, sent at once, says which app to load
(``AppSource``: by reference, as the simulation loaded it) and for which clients; its environment
says which GPU it sees and how many math threads it runs (``runtime.worker_devices``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedhive.app.loader import LoadedApp, load_app
from fedhive.errors import AppError, FedhiveError
from fedhive.runtime.worker_devices import worker_env
from fedhive.runtime.worker_frames import encode

STARTUP_TIMEOUT_S = 300.0  # importing torch on a loaded machine, many workers at once
EXIT_WAIT_S = 3.0


@dataclass(frozen=True)
class AppSource:
    """How a worker process loads the app the simulation runs: a loader (``module:function``) and
    its arguments, the app's code digest (a worker whose copy differs refuses), each client's site
    settings before its ``partition_id`` and ``num_partitions``, and the number of clients."""

    loader: str
    args: tuple[str, ...]
    digest: str
    node: Mapping[str, Any]
    clients: int


def app_source(loaded: LoadedApp, node: Mapping[str, Any], clients: int) -> AppSource | None:
    """The source of an app ``load_app`` gave (a reference any process can load), or None for
    one built otherwise or site settings that are not plain JSON: those train in this process."""
    try:
        again = load_app(loaded.ref)
        json.dumps(dict(node), allow_nan=False)
    except (FedhiveError, TypeError, ValueError):
        return None
    if again.app is not loaded.app:
        return None
    return AppSource("fedhive.app.loader:load_app", (loaded.ref,), loaded.digest, dict(node), clients)


def early_source(ref: str, node: Mapping[str, Any], clients: int) -> AppSource:
    """The source of an app this process has not loaded yet: workers started with it import the
    app (torch, say) while this process does the same, and ``confirmed`` checks it afterwards."""
    return AppSource("fedhive.app.loader:load_app", (ref.strip(),), "", dict(node), clients)


def confirmed(source: AppSource, loaded: LoadedApp) -> AppSource | None:
    """``source`` (from ``early_source``) with the digest of the app this process then loaded,
    or None if that is not the app the workers load (another reference, or one no other process
    can load by reference)."""
    checked = app_source(loaded, source.node, source.clients)
    return checked if checked is not None and checked.args == source.args else None


def spawn(
    source: AppSource, number: int, device: str | None, log_level: int
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Worker ``number``, started: its process and our end of its socket, its hello already sent."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedhive.runtime.training_worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=worker_env(device, os.environ),
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        ours.close()
        raise AppError(f"cannot start a worker process: {exc}") from None
    finally:
        theirs.close()
    hello = {
        "worker": number,
        "loader": source.loader,
        "args": list(source.args),
        "node": dict(source.node),
        "clients": source.clients,
        "sys_path": [p for p in sys.path if p],  # what the simulation could import, the worker can
        "log_level": log_level,
    }
    ours.sendall(encode(hello))  # a small frame into an empty socket: it does not block
    return proc, ours


async def exit_of(proc: subprocess.Popen[bytes]) -> str:
    code = await asyncio.to_thread(wait, proc, EXIT_WAIT_S)
    return describe(code)


def describe(code: int | None) -> str:
    if code is None:
        return "it closed its socket but has not exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            wait(proc, EXIT_WAIT_S)


def reap(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Wait a few seconds in all for them to exit on their own (their sockets are closed), then
    kill those still running."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for proc in procs:
        wait(proc, max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            wait(proc, EXIT_WAIT_S)
