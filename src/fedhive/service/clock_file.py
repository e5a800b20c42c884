"""Replay protection for ``fedhive serve`` across its own restarts.

The hub's verifier remembers message ids only while the process lives. Restarted, it refuses
whatever was signed before it started (``core.signing.SenderClocks``), in each sender's own clock:
a sender whose clock runs ahead of the server's would otherwise get its last frames before the
restart taken for new ones. The leads that measure this are kept in a file under the server's
home, saved every few seconds and at shutdown, and read back at start (a coordinator keeps them
with its checkpoint instead). A lost or unreadable file costs only the leads: the server starts
with none and says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from pathlib import Path

from fedhive.core.signing import SenderClocks

log = logging.getLogger("fedhive.platform")

SAVE_INTERVAL_S = 5.0


class ClockFile:
    """Sender clock leads in a JSON file (``{"sender": seconds}``), written atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SenderClocks:
        try:
            raw = json.loads(self.path.read_text())
            leads = {str(k): float(v) for k, v in raw.items()}
        except FileNotFoundError:
            return SenderClocks()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("sender clock leads in %s could not be read (%s): starting without them", self.path, exc)
            return SenderClocks()
        return SenderClocks({k: v for k, v in leads.items() if math.isfinite(v)})

    def save(self, clocks: SenderClocks) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(clocks.snapshot(), f, sort_keys=True)
        os.replace(tmp, self.path)

    async def keep(self, clocks: SenderClocks, interval_s: float = SAVE_INTERVAL_S) -> None:
        """Save every ``interval_s`` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await asyncio.to_thread(self._save_logged, clocks)
        finally:
            self._save_logged(clocks)

    def _save_logged(self, clocks: SenderClocks) -> None:
        try:
            self.save(clocks)
        except OSError as exc:
            log.warning("cannot save sender clock leads to %s: %s", self.path, exc)
