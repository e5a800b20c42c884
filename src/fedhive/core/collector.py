"""Python's cycle collector around imports: paused while a node imports, the imports kept out of it.

Importing an app's libraries creates hundreds of thousands of objects that live as long as the
process (torch and what it pulls in, sympy among them: about 280,000), and the collector, whose
runs are triggered by allocations, walks them again and again while they are created and then in
every full collection of the run: 15 to 20 % of a short PyTorch run's CPU time (measured by
bench/compare_flower_apps.py's floor, which runs the app without any framework). So a node
pauses the collector while it imports its own modules and its app, and moves what the app's import
made into the collector's permanent generation (``gc.freeze``, what the Python documentation
advises for long-lived start-up state), where no later collection looks at it again. Reference
counting still frees everything as usual; only cycles made during the first app import stay until
the process ends, and those are few (the collections during torch's import find some 8,500).

The freeze is taken once per process, at its first app import: a process that loads app after
app (the platform's server) does not freeze what later sessions leave behind.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_frozen = False


@contextmanager
def collector_paused(*, freeze_once: bool = False) -> Iterator[None]:
    """Pause the cycle collector for the block (the state before it is restored, as a caller that
    had it off keeps it off); with ``freeze_once``, the first such block of the process also
    freezes every object alive at its end."""
    global _frozen
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze_once and not _frozen:
            _frozen = True
            gc.freeze()
        if was_enabled:
            gc.enable()
