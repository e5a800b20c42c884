"""``fedhive serve`` as a subprocess, as a user starts it (for tests that kill and restart it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def serve_args(deployment: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``fedhive serve`` options and environment variables of a ``deployment`` fixture value."""
    flags = {"broker_url": "--broker", "db_url": "--db", "artifacts_url": "--artifacts"}
    args = [arg for key, flag in flags.items() if key in deployment for arg in (flag, deployment[key])]
    env = {"FEDHIVE_NAMESPACE": deployment["namespace"]} if "namespace" in deployment else {}
    return args, env


START_TIMEOUT_S = 180


class Server:
    """``fedhive serve`` in a subprocess; the API's URL is read from its ready line."""

    def __init__(
        self, home: Path, deployment: dict[str, str], *, local_clients: int = 3, extra: Sequence[str] = ()
    ) -> None:
        args, env = serve_args(deployment)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedhive.cli.main", "-v", "serve", "--port", "0", "--home", str(home),
             "--local-clients", str(local_clients), *args, *extra],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FEDHIVE_BCRYPT_ROUNDS": "4", **env},
        )  # fmt: skip
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        # Woken by the ready line or by the end of its output (it exited: the line never comes).
        # 180 s: 30 s was not enough for the in-process platform to be ready at load 26 (CI).
        self._ready.wait(START_TIMEOUT_S)
        found = re.search(r"serving on (\S+)", "".join(self.lines))
        if found is None:
            exited = self.proc.poll()
            self.kill()
            late = f"printed no 'serving on' line within {START_TIMEOUT_S} s (still running)"
            why = f"exited with code {exited} without its 'serving on' line" if exited is not None else late
            pytest.fail(f"fedhive serve {why}:\n{self.tail()}")
        self.url = found.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "serving on" in line:
                self._ready.set()
        self.proc.wait()  # end of output: the process is exiting; its exit code is known before the wake
        self._ready.set()

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def poll(fn: Callable[[], T], deadline_s: float, every: float = 0.2, what: str = "condition") -> T:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = fn()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"{what} not met within {deadline_s} s")
