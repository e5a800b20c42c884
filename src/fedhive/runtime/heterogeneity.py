"""Heterogeneous virtual clients in simulation: how fast each one trains, and when it is online.

Why: a synchronous round waits for its slowest client, an asynchronous session does not; comparing
the two needs clients that differ, the same ones in both (docs/async.md, "Heterogeneous clients").

- **Speed** (``--client-speed``): each client gets a factor, drawn from the seed. Its training takes
  its real time on this machine times the factor: after its trainer returns, the client waits
  ``(factor - 1) * the measured training time`` (CPU time, at most the wall time) before its
  UPDATE leaves (an asyncio wait: the
  loop, and the other clients, go on meanwhile). ``lognormal:SIGMA``: ``exp(SIGMA * z)``, z standard
  normal; ``slow:SHAREXFACTOR`` (``slow:0.2x10``): that share of the clients, drawn at random, is
  FACTOR times slower. A suffix ``@BASE`` makes every client BASE times slower besides (this machine
  then stands for devices BASE times faster than the fastest client). A factor below 1 counts as
  1: a client cannot train faster than this machine runs it.
- **Availability** (``--availability``): ``SHARE[:PERIOD_S]`` (``0.8``): each client alternates
  online and offline periods, drawn from the seed (exponential, a mean cycle of PERIOD_S, default
  10 s), online SHARE of the time; or a CSV trace of online windows, ``client,start_s,end_s``
  (client: its id or index; seconds from the session's start; a client not in the file is always
  online). An offline client is unreachable: a TRAIN or EVALUATE sent to it is taken when it is
  next online (dropped if it never is), and an answer it finished offline leaves when it is back.

Both are applied around an unchanged client: a ``Trainer`` wrapper measures training, and the
client's transport waits. So it works for any app, and a client runs exactly as it does without.
"""

from __future__ import annotations

import asyncio
import csv
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn, Trainer
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.transports.base import Transport, TransportWrapper
from fedhive.transports.memory import MemoryNetwork

DEFAULT_PERIOD_S = 10.0
_SPEED = re.compile(r"(?:lognormal:(?P<sigma>[^@]+)|slow:(?P<share>[^x@]+)x(?P<factor>[^@]+))(?:@(?P<base>.+))?")
_HOLD = (Kind.TRAIN, Kind.EVALUATE)  # what an offline client takes only once it is online
_ANSWERS = (Kind.UPDATE, Kind.ERROR, Kind.EVALUATION)


def speed_factors(spec: str, clients: int, seed: int) -> np.ndarray:
    """Each client's slowdown factor (at least 1) for ``spec``, the same for the same seed."""
    m = _SPEED.fullmatch(spec.strip())
    try:
        if m is None:
            raise ValueError
        base = float(m["base"]) if m["base"] else 1.0
        rng = np.random.default_rng([seed, 0x5BEED])
        if m["sigma"] is not None:
            sigma = float(m["sigma"])
            if not 0 <= sigma <= 10:
                raise ValueError
            drawn = np.exp(sigma * rng.standard_normal(clients))
        else:
            share, factor = float(m["share"]), float(m["factor"])
            if not (0 <= share <= 1 and 1 <= factor <= 1e6):
                raise ValueError
            drawn = np.ones(clients)
            drawn[rng.choice(clients, size=round(share * clients), replace=False)] = factor
        if not 0 < base <= 1e6:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--client-speed must be lognormal:SIGMA (0 to 10) or slow:SHARExFACTOR (share 0 to 1, factor at "
            f"least 1, e.g. slow:0.2x10), each optionally @BASE (above 0), got {spec!r}"
        ) from None
    return np.maximum(1.0, base * drawn)


class OnlineWindows:
    """When one client is online: sorted, disjoint windows [start, end) in seconds from the start,
    drawn as far as asked (``share`` form) or read from a trace."""

    def __init__(
        self, windows: list[tuple[float, float]] | None = None, *, draw: tuple[float, float, int] | None = None
    ):
        self._windows = sorted(windows or [])
        self._draw = draw  # (share, period_s, rng seed): alternating periods, drawn on demand
        self._rng = np.random.default_rng(draw[2]) if draw else None
        self._drawn_to = 0.0
        self._online = False
        if draw is not None and self._rng is not None:
            self._online = bool(self._rng.random() < draw[0])

    def next_online(self, t: float) -> float | None:
        """``t`` if online at ``t``, else when it next comes online (None: never again)."""
        self._draw_until(t)
        for start, end in self._windows:
            if end > t:
                return max(start, t)
        return None

    def _draw_until(self, t: float) -> None:
        if self._draw is None or self._rng is None:
            return
        share, period, _ = self._draw
        while self._drawn_to <= t + period:  # one period ahead: ``next_online`` sees the next window
            mean = share * period if self._online else (1 - share) * period
            length = float(self._rng.exponential(mean)) if mean > 0 else math.inf
            if self._online:
                self._windows.append((self._drawn_to, self._drawn_to + length))
            self._drawn_to += length
            self._online = not self._online


def availability(spec: str, ids: Sequence[str], seed: int) -> list[OnlineWindows]:
    """Each client's online windows: ``SHARE[:PERIOD_S]`` or a CSV trace file."""
    head, _, period = spec.partition(":")
    try:
        share = float(head)
    except ValueError:
        return _trace(Path(spec), ids)
    try:
        period_s = float(period) if period else DEFAULT_PERIOD_S
    except ValueError:
        period_s = -1.0
    if not (0 < share <= 1 and 0 < period_s < 1e9):
        raise ConfigError(f"--availability must be SHARE (0 to 1) with an optional :PERIOD_S above 0, got {spec!r}")
    if share == 1:
        return [OnlineWindows([(0.0, math.inf)]) for _ in ids]
    return [OnlineWindows(draw=(share, period_s, hash_seed(seed, i))) for i in range(len(ids))]


def hash_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, 0xA7A11, index]).generate_state(1)[0])


def _trace(path: Path, ids: Sequence[str]) -> list[OnlineWindows]:
    index = {cid: i for i, cid in enumerate(ids)}
    windows: dict[int, list[tuple[float, float]]] = {}
    try:
        with path.open(newline="") as f:
            rows = csv.DictReader(f)
            if rows.fieldnames is None or {"client", "start_s", "end_s"} - set(rows.fieldnames):
                raise ConfigError(f"{path}: an availability trace has the columns client,start_s,end_s")
            for line, row in enumerate(rows, start=2):
                who = (row["client"] or "").strip()
                i = index.get(who, int(who) if who.isdigit() else -1)
                try:
                    start, end = float(row["start_s"]), float(row["end_s"])
                except (TypeError, ValueError):
                    start, end = math.nan, math.nan
                if not 0 <= i < len(ids):
                    raise ConfigError(f"{path} line {line}: no client {who!r} (ids or indexes of {len(ids)} clients)")
                if not 0 <= start < end:
                    raise ConfigError(f"{path} line {line}: start_s and end_s must be numbers, 0 <= start_s < end_s")
                windows.setdefault(i, []).append((start, end))
    except OSError as exc:
        raise ConfigError(f"--availability: cannot read {path}: {exc.strerror}") from None
    return [OnlineWindows(windows[i]) if i in windows else OnlineWindows([(0.0, math.inf)]) for i in range(len(ids))]


@dataclass
class Pace:
    """One client's speed factor, online windows and its last training's measured time."""

    factor: float
    online: OnlineWindows | None
    clock: _Clock
    compute_s: float = 0.0

    async def wait_online(self) -> bool:
        """Until the client is online; False if it never is again."""
        if self.online is None:
            return True
        t = self.clock.now()
        at = self.online.next_online(t)
        if at is None:
            return False
        if at > t:
            await asyncio.sleep(at - t)
        return True


class _Clock:
    """Seconds since the simulated federation started (the first client connected)."""

    def __init__(self) -> None:
        self.start: float | None = None

    def now(self) -> float:
        if self.start is None:
            self.start = time.monotonic()
        return time.monotonic() - self.start


class PacedTrainer:
    """A ``Trainer`` that measures how long each training takes (for its client's wait)."""

    def __init__(self, inner: Trainer, pace: Pace) -> None:
        self.inner = inner
        self.pace = pace

    def initial_params(self, seed: int) -> Params:
        return self.inner.initial_params(seed)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return self.inner.fit(params, config, progress)
        finally:
            # The CPU time the training took, at most its wall time: on a shared machine the wall
            # time also counts other processes' turns, which a factor of 100 would blow up.
            self.pace.compute_s = min(time.perf_counter() - wall, time.process_time() - cpu)

    def evaluate(self, params: Params) -> EvalResult:
        return self.inner.evaluate(params)

    def __getattr__(self, name: str) -> Any:  # the app's own attributes (param_spec) show through
        return getattr(self.inner, name)


class PacedTransport(TransportWrapper):
    """A client's transport that holds its UPDATE for the slowdown, and everything while offline."""

    def __init__(self, inner: Transport, pace: Pace) -> None:
        super().__init__(inner)
        self.pace = pace

    async def send(self, to: str, message: Message) -> None:
        if message.kind in (Kind.UPDATE, Kind.ERROR) and self.pace.compute_s:
            slower = (self.pace.factor - 1.0) * self.pace.compute_s
            self.pace.compute_s = 0.0
            if slower > 0:
                await asyncio.sleep(slower)
        if message.kind in _ANSWERS and not await self.pace.wait_online():
            return  # offline for good: the answer never arrives
        await self.inner.send(to, message)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        async for message in self.inner:
            if message.kind in _HOLD and not await self.pace.wait_online():
                continue  # never online again: it never gets it
            yield message


class Heterogeneity:
    """The speeds and availability of a simulated population, applied per client."""

    def __init__(self, ids: Sequence[str], seed: int, *, speed: str | None = None, online: str | None = None):
        self.ids = list(ids)
        self.factors = speed_factors(speed, len(ids), seed) if speed else np.ones(len(ids))
        windows = availability(online, ids, seed) if online else [None] * len(ids)
        self.clock = _Clock()
        self.paces = {cid: Pace(float(f), w, self.clock) for cid, f, w in zip(ids, self.factors, windows, strict=True)}

    def trainers(self, trainers: Sequence[Trainer]) -> list[Trainer]:
        return [PacedTrainer(t, self.paces[cid]) for cid, t in zip(self.ids, trainers, strict=True)]

    def network(self) -> MemoryNetwork:
        return _PacedNetwork(self)

    def summary(self) -> str:
        f = self.factors
        slow = int((f > 1).sum())
        return f"client speed factors: median {np.median(f):.2f}, max {f.max():.2f}, {slow} of {len(f)} slowed"


class _PacedNetwork(MemoryNetwork):
    """The memory network whose client transports are paced; the coordinator's is not."""

    def __init__(self, heterogeneity: Heterogeneity) -> None:
        super().__init__()
        self._paces = heterogeneity.paces
        self._clock = heterogeneity.clock

    def connect(self, node_id: str, *, aliases: Sequence[str] = ()) -> Any:
        if aliases and any(a in self._paces for a in (node_id, *aliases)):
            raise ConfigError("heterogeneous clients run as nodes of their own, not behind a client host")
        transport = super().connect(node_id, aliases=aliases)
        pace = self._paces.get(node_id)
        if pace is None:
            return transport
        self._clock.now()  # the clock starts with the first client
        return PacedTransport(transport, pace)
