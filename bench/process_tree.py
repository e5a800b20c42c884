"""Run a command as a child process; measure its wall time and the peak memory of its process tree.

Memory is the sum over the child and all its descendants of their proportional set size (PSS,
from ``/proc/PID/smaps_rollup``: a page shared by k processes counts 1/k in each, so shared
libraries and Ray's shared-memory object store are not counted once per process), or of their
resident set size where the kernel has no smaps_rollup. A sampler thread walks the process table
every 50 ms (less often when a sample costs more than 2.5 ms of CPU: see ``_COST_FACTOR``) and keeps
the largest sum seen; ``Measured.sampler_cpu_s`` says what the sampling cost. Descendants are found
through parent ids; a process that is seen once stays tracked even when it outlives its parent
(Ray's workers do, briefly), and whatever of the tree is still alive when the child has exited is
sampled until it exits too (up to ``linger_s``), then terminated.

Linux only (``/proc``). The standard library only: it runs in fedhive's virtual environment and
needs nothing from either framework.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_HAVE_SMAPS_ROLLUP = os.path.exists("/proc/self/smaps_rollup")
_RESCAN_EVERY = 4  # walk the whole process table on every 4th sample; read memory on every one
_COST_FACTOR = 20


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_s: float  # spawn to exit of the child itself: what a user waits for
    peak_mb: float  # largest sum of PSS (or RSS) over the tree, in MiB (2**20 bytes)
    peak_processes: int  # processes alive in the tree at the largest sum
    metric: str  # "pss" or "rss"
    stdout: str
    sampler_cpu_s: float
    samples: int


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # the command name may hold spaces and parens
    return int(fields[1]), int(fields[19])


def _memory_kb(pid: int) -> tuple[int, str] | None:
    if _HAVE_SMAPS_ROLLUP:
        text = _read(f"/proc/{pid}/smaps_rollup")
        if text is None:
            return None
        at = text.find(b"\nPss:")
        return (int(text[at + 5 : text.index(b"kB", at)]), "pss") if at >= 0 else None
    text = _read(f"/proc/{pid}/statm")
    return (int(text.split()[1]) * _PAGE_KB, "rss") if text else None


class _Sampler(threading.Thread):
    def __init__(self, root: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval_s = interval_s
        self.tracked: dict[int, int] = {}  # pid -> start ticks (guards against pid reuse)
        self.peak_kb = 0
        self.peak_processes = 0
        self.metric = "pss"
        self.stop_event = threading.Event()
        self.cpu_s = 0.0  # CPU time the sampler itself used: what measuring cost the machine
        self.samples = 0

    def _scan(self) -> None:
        parents: dict[int, int] = {}
        starts: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                info = _stat(int(name))
                if info:
                    parents[int(name)], starts[int(name)] = info
        # A process is in the tree when its parent is; iterate until no new member appears.
        members = {p for p in self.tracked if starts.get(p) == self.tracked[p]}
        if self.root in starts:
            members.add(self.root)
        grew = True
        while grew:
            new = {p for p, pp in parents.items() if pp in members and p not in members}
            members |= new
            grew = bool(new)
        for p in members:
            self.tracked.setdefault(p, starts[p])
        self.tracked = {p: s for p, s in self.tracked.items() if starts.get(p) == s}

    def sample(self, rescan: bool = True) -> None:
        if rescan:
            self._scan()
        total, alive = 0, 0
        for pid in list(self.tracked):
            got = _memory_kb(pid)
            if got is not None:
                total += got[0]
                alive += 1
                if got[1] == "rss":
                    self.metric = "rss"
        if total > self.peak_kb:
            self.peak_kb, self.peak_processes = total, alive

    def run(self) -> None:
        # A low priority for this thread alone (Linux: a thread is a task): on a busy 2-core
        # machine the sampler should take its CPU from idle time, not from the measured processes.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        n = 0
        while not self.stop_event.is_set():
            cpu = time.thread_time()
            self.sample(rescan=n % _RESCAN_EVERY == 0)
            n += 1
            # Reading PSS makes the kernel walk each process's page tables: ~2 ms per Ray process
            # here. Waiting 20x what a sample cost keeps the sampler under 5% of one core.
            self.stop_event.wait(max(self.interval_s, _COST_FACTOR * (time.thread_time() - cpu)))
        self.cpu_s = time.thread_time()
        self.samples = n


def measure(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stderr_path: Path | None = None,
    interval_s: float = 0.05,
    linger_s: float = 10.0,
    timeout_s: float = 900.0,
) -> Measured:
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err)
        sampler = _Sampler(proc.pid, interval_s)
        sampler.start()
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + linger_s
        while time.monotonic() < deadline and any(_stat(p) for p in list(sampler.tracked) if p != proc.pid):
            time.sleep(interval_s)
        sampler.stop_event.set()
        sampler.join()
        sampler.sample()  # the tree's last state (normally nothing is left)
        _terminate_leftovers(sampler.tracked, proc.pid)
    finally:
        if stderr_path:
            err.close()  # type: ignore[union-attr]
    return Measured(
        proc.returncode,
        wall,
        sampler.peak_kb / 1024,
        sampler.peak_processes,
        sampler.metric,
        out.decode(),
        sampler.cpu_s,
        sampler.samples,
    )


def _terminate_leftovers(tracked: dict[int, int], root: int) -> None:
    """Processes of the measured tree that outlived the linger time (started by our child only)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, start in tracked.items() if p != root and (_stat(p) or (0, -1))[1] == start]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not alive:
            return
        time.sleep(1.0)
