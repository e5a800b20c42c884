"""When a parallel simulation's processes did what: a timeline for finding where time goes.

Off unless ``FEDHIVE_TIMELINE`` names a file: then the simulation's process and every worker
append one JSON line per mark (``{"t": wall time, "pid", "who", "what", ...}``) to it, each
line written with one ``write`` of an ``O_APPEND`` file, so processes do not tear each other's
lines. ``bench/floor_timeline.py`` reads it back: when the workers were ready, each worker's
busy and idle time per round, the last-client tail of each round.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_PATH = os.environ.get("FEDHIVE_TIMELINE")
_WHO = "main"


def enabled() -> bool:
    return _PATH is not None


def set_who(who: str) -> None:
    global _WHO
    _WHO = who


def mark(what: str, **fields: Any) -> None:
    """One line on the timeline (nothing when it is off)."""
    if _PATH is None:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "who": _WHO, "what": what, **fields}) + "\n"
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
