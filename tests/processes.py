"""A subprocess whose output lines tests wait on (with deadlines, never sleeps)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import IO

import pytest


class Proc:
    """A subprocess whose stdout and stderr lines are collected by two reader threads."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # end of output: the process is exiting

    def wait_for(self, text: str, *, timeout: float = 60, stream: str = "out", after: int = 0) -> str:
        """The first line of ``stream`` containing ``text``; fails with the output if it does not come.
        ``after``: lines before this index do not count (a line an earlier phase printed too)."""
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in lines[after:] if text in line), None)
                if found is not None:
                    return found
                if self._all_read():  # exited, and every line it printed is in: it never will
                    pytest.fail(
                        f"{self.name} exited with code {self.popen.returncode} without a line with {text!r}\n"
                        f"{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{self.name}: no line with {text!r} within {timeout} s\n{self.tail()}")
                # Woken by each new line; the bound notices an exit that printed nothing more.
                self._changed.wait(min(left, 0.5))

    def _all_read(self) -> bool:
        return self.popen.poll() is not None and not any(t.is_alive() for t in self._readers)

    def finish(self, timeout: float = 60) -> int:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout} s\n{self.tail()}")
        for t in self._readers:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def tail(self, n: int = 25) -> str:
        return "--- stdout\n" + "\n".join(self.out[-n:]) + "\n--- stderr\n" + "\n".join(self.err[-n:])
