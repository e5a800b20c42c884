"""Leave the process the moment a command is done, without the interpreter's teardown.

After a run, Python's finalization frees every module (numpy, scipy, pandas, torch, Flower: a
few thousand of them) and collects their objects one by one. For ``fedhive simulate`` on a Flower
app that took longer than fedhive's own work: 0.3 to 1 s on an idle 2-core machine, several
seconds under load (docs/flower.md). Nothing is left to clean up by then (the results are
written and closed), so the process ends with ``os._exit`` as mypy's ``hard_exit`` does, after
what a normal exit would still do for the user: the ``atexit`` handlers (logging's flush,
MLflow's run end, coverage's data file) and flushing stdout and stderr.

A process with another (non-daemon) thread still running a second later exits normally: a
normal exit waits for it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from typing import NoReturn


def exit_status(code: str | int | None) -> int:
    """The status ``sys.exit(code)`` ends the process with (a message is printed to stderr)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: str | int | None) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without the interpreter's teardown."""
    if not _others_done(OTHERS_WAIT_S):
        sys.exit(code)
    status = exit_status(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing reaches it
            stream.flush()
    os._exit(status)


# How long a thread that is ending is waited for: a pool shut down without waiting (the virtual
# clients' training thread) still has its thread finishing for a moment after the run.
OTHERS_WAIT_S = 1.0


def _others_done(timeout_s: float) -> bool:
    """Whether no other non-daemon thread is left, after waiting up to ``timeout_s`` for those
    still running. Daemon threads do not count: a normal exit does not wait for them either."""
    deadline = time.monotonic() + timeout_s
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate())


def is_entry_point(main: object) -> bool:
    """Whether ``main`` is what this process runs: the ``fedhive`` script and ``python -m
    fedhive.cli.main`` call it from ``__main__``; a test that calls it in its own process does not
    (and must keep its process)."""
    return getattr(sys.modules.get("__main__"), "main", None) is main
