"""Reports a command-line session to a running ``fedhive serve``: an observer on the coordinator's bus.

``fedhive coordinator --report-to URL`` attaches it; the session then appears on that server's
dashboard and REST API (``api.reported``) like one the platform runs, owned by the reporting user.

Reporting must never slow down or fail the session. The bus handlers only turn an event into a
small JSON dict and append it to a bounded queue (the oldest reports go first when it is full, as
in the dashboard's live feed); one task posts them in batches with httpx, retrying with
exponential backoff while the server cannot be reached (one warning line when it goes, one when it
is back). An answer that no retry changes (wrong credentials, its id taken) ends reporting with
one line; the session goes on. ``aclose`` gives the last reports (the session's end) a bounded
time to go out, and then the session's final model (``report_model``: a completed session's, once
the server holds its end; one warning line if it cannot be uploaded in that time).

Cancel on the dashboard stops the session itself: every ``interval_s`` without a report to send
the sender posts an empty batch, and the server's answer that the session was cancelled (409
with the code ``session_cancelled``) emits ``CancelRequested`` on the coordinator's bus with the
reason ``CANCELLED_ON_SERVER``: the coordinator sends STOP to its clients and ends the session
as CANCELLED, within one interval of the click.

Credentials (``Login``): a bearer token, or an e-mail and password that are exchanged for one
(``POST /auth/signin``) and again when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from fedhive.core.params import Params
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.tracking.report_model import upload_model

log = logging.getLogger("fedhive.report")
BATCH = 200  # reports per post (the server takes up to 500)
QUEUE = 20_000  # reports held while the server is away
FLUSH_S = 10.0  # what the end of a session waits for its last reports
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")  # what the server takes as a metric or client name
_RETRIED = {408, 425, 429, 500, 502, 503, 504}
INTERVAL_S = 5.0  # at least one post this often: how soon a cancel on the server stops the session
CANCELLED_CODE = "session_cancelled"  # service.reported_sessions.CANCELLED_CODE
CANCELLED_ON_SERVER = "cancelled on the server by its owner"


@dataclass(frozen=True)
class Login:
    token: str | None = None
    email: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.token and not (self.email and self.password):
            raise ValueError("a token, or an e-mail and a password")


class _GiveUp(Exception):
    """An answer no retry changes: reporting stops, with this line."""


class _Cancelled(_GiveUp):
    """The session was cancelled on the server: reporting stops, and so does the session."""


class _Retry(Exception):
    """The server cannot be reached now, or is overloaded: the same batch again later."""


class PlatformReporter:
    def __init__(
        self,
        url: str,
        login: Login,
        *,
        config: Mapping[str, Any],
        name: str | None = None,
        topology: str = "star",
        round_figures: Callable[[], Mapping[str, float]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        queue_size: int = QUEUE,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.session_id = str(config["session_id"])
        self._login = login
        self._token = login.token
        self._opening = {"config": dict(config), "name": _text(name, 100) or None, "topology": topology}
        self._round_figures = round_figures
        self._transport = transport
        self._backoff = backoff_s
        self._interval_s = interval_s
        self._bus: EventBus | None = None  # the coordinator's: a cancel on the server is told there
        self._ended_sent = False
        self._queue: deque[dict[str, Any]] = deque(maxlen=queue_size)
        self._end: dict[str, Any] | None = None  # kept apart: never the report dropped
        self._model: Params | None = None  # a completed session's, uploaded once its end is delivered
        self._round_bytes: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.stopped: str | None = None  # why reporting stopped early
        self._unreachable = False

    # -- observer ------------------------------------------------------------------------------
    def attach(self, bus: EventBus) -> None:
        self._bus = bus
        bus.on(ev.SessionStarted, lambda e: self._put({"kind": "started", "clients": _names(e.clients)}))
        bus.on(ev.UpdateAccepted, self._on_accepted)
        bus.on(ev.UpdateAcceptedVia, lambda e: self._client(e.round, e.client_id, "ACCEPTED", e, via=e.via))
        bus.on(ev.UpdateRejected, self._on_rejected)
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.SessionCompleted, self._on_completed)
        bus.on(ev.SessionFailedEvent, lambda e: self._ended("FAILED", e.reason))
        bus.on(ev.SessionCancelled, lambda e: self._ended("CANCELLED", e.reason))

    def _on_accepted(self, e: ev.UpdateAccepted) -> None:
        self._round_bytes[e.round] = self._round_bytes.get(e.round, 0) + e.nbytes
        self._client(e.round, e.client_id, "ACCEPTED", e)

    def _on_rejected(self, e: ev.UpdateRejected) -> None:
        status = "LATE" if e.reason == "late" else "REJECTED"
        self._put(
            {"kind": "client", "round": e.round, "client_id": e.client_id, "status": status,
             "reason": _text(e.reason, 500)}
        )  # fmt: skip

    def _client(self, rnd: int, client_id: str, status: str, e: Any, via: str | None = None) -> None:
        report = {
            "kind": "client", "round": rnd, "client_id": client_id, "status": status,
            "num_examples": int(e.num_examples), "metrics": _figures(e.metrics),
        }  # fmt: skip
        if via is not None:
            report["via"] = via
        self._put(report)

    def _on_round(self, e: ev.RoundCompleted) -> None:
        extra = _figures(self._round_figures()) if self._round_figures is not None else {}
        self._put(
            {
                "kind": "round", "round": e.round, "metrics": _figures(e.metrics),
                "train_metrics": _figures(e.train_metrics), "extra": extra, "num_updates": e.num_updates,
                "num_selected": e.num_selected, "missing": _names(e.late_or_missing),
                "bytes_received": self._round_bytes.pop(e.round, 0), "duration_s": max(0.0, float(e.duration_s)),
            }
        )  # fmt: skip

    def _on_completed(self, e: ev.SessionCompleted) -> None:
        how = (
            f"stopped early after round {e.rounds}: no new best within the session's patience"
            if e.stopped_early
            else f"completed all {e.rounds} rounds"
        )
        if len(e.params) and self._end is None:
            self._model = e.params
        self._ended("COMPLETED", how)

    def _ended(self, status: str, reason: str) -> None:
        if self._end is None:
            self._end = {"kind": "ended", "status": status, "reason": _text(reason, 2000)}
            self._wake.set()

    def _put(self, report: dict[str, Any]) -> None:
        if self.stopped is not None:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque drops the oldest itself
        self._queue.append(report)
        self._wake.set()

    # -- the sender ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start posting (on the running loop). Nothing waits for the server here."""
        self._task = asyncio.create_task(self._run(), name=f"report-{self.session_id}")

    async def aclose(self, wait_s: float = FLUSH_S) -> None:
        """Let the last reports go out, for at most ``wait_s``; then say what was not delivered."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception as exc:  # a bug here must not hide the session's own outcome
            log.warning("reporting to %s failed: %s", self.url, exc)
        if self._model is not None and self.stopped is None:
            log.warning("the model of session %s was not uploaded to %s: no time left", self.session_id, self.url)
        left = len(self._queue) + (self._end is not None)
        if self.stopped is None and left:
            log.warning("%d report(s) of session %s were not delivered to %s", left, self.session_id, self.url)
        if self.dropped:
            log.warning(
                "%d report(s) of session %s were dropped while %s was away", self.dropped, self.session_id, self.url
            )

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0, transport=self._transport) as http:
            delay = self._backoff[0]
            while True:
                batch = self._next_batch()
                if not batch:
                    if self._ended_sent and self._model is not None:
                        await self._upload_model(http)
                    if self._closing or self._ended_sent:
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._interval_s)
                    if not self._wake.is_set():  # a quiet interval: ask whether the session goes on
                        await self._ask(http)
                        if self.stopped is not None:
                            return
                    continue
                try:
                    await self._deliver(http, batch)
                except _GiveUp as exc:
                    self._give_up(exc)
                    return
                except _Retry as exc:
                    if not self._unreachable:
                        self._unreachable = True
                        log.warning("%s cannot be reached (%s); the session goes on, reports wait", self.url, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                if self._unreachable:
                    self._unreachable = False
                    log.warning("%s reached again; reporting session %s", self.url, self.session_id)
                delay = self._backoff[0]
                self._done(batch)

    async def _upload_model(self, http: httpx.AsyncClient) -> None:
        """The completed session's model, once: a failure is one warning line, never the session's."""
        model = self._model
        assert model is not None
        try:
            token = self._token or await self._sign_in(http)
        except (_GiveUp, _Retry, httpx.HTTPError) as exc:
            why: str | None = str(exc)
        else:
            why = await upload_model(http, token, self.session_id, model)
        self._model = None  # not before: a close that cuts the upload short says so (aclose)
        if why is not None:
            log.warning("the model of session %s was not uploaded to %s: %s", self.session_id, self.url, why)

    def _give_up(self, exc: _GiveUp) -> None:
        self.stopped = str(exc)
        self._queue.clear()
        self._end = None
        if isinstance(exc, _Cancelled) and self._bus is not None:
            log.warning("session %s was cancelled on %s; stopping it", self.session_id, self.url)
            self._bus.emit(ev.CancelRequested(self.session_id, CANCELLED_ON_SERVER))
        else:
            log.warning("no longer reporting session %s to %s: %s", self.session_id, self.url, exc)

    async def _ask(self, http: httpx.AsyncClient) -> None:
        """An empty batch: nothing to record, but the server's answer says if it was cancelled."""
        try:
            if not self._opened:
                await self._post(http, "/sessions/reported", self._opening)
                self._opened = True
            await self._post(http, f"/sessions/{self.session_id}/events", {"events": []})
        except _GiveUp as exc:
            self._give_up(exc)
        except (_Retry, _Refused):
            pass  # the next report (or interval) tries again; an unreachable server is said by reports

    def _next_batch(self) -> list[dict[str, Any]]:
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        if len(batch) < BATCH and len(batch) == len(self._queue) and self._end is not None:
            batch.append(self._end)
        return batch

    def _done(self, batch: list[dict[str, Any]]) -> None:
        """Remove what was delivered (new reports were only appended meanwhile, at the other end)."""
        for report in batch:
            if report is self._end:
                self._end = None
                self._ended_sent = True  # the server holds the session's end: nothing more to ask
            elif self._queue and self._queue[0] is report:
                self._queue.popleft()
        self.sent += len(batch)

    async def _deliver(self, http: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        if not self._opened:
            await self._post(http, "/sessions/reported", self._opening)
            self._opened = True
        try:
            await self._post(http, f"/sessions/{self.session_id}/events", {"events": batch})
        except _Refused as exc:  # this batch is wrong (a bug of ours): drop it, keep reporting
            log.warning("the server refused %d report(s) of session %s: %s", len(batch), self.session_id, exc)

    async def _post(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
        response = await self._request(http, path, body)
        if response.status_code == 401 and self._login.password:
            self._token = None  # expired: sign in again, once
            response = await self._request(http, path, body)
        if response.is_success:
            return
        detail = _detail(response)
        if response.status_code in _RETRIED:
            raise _Retry(f"HTTP {response.status_code}: {detail}")
        if response.status_code == 422 and path.endswith("/events"):
            raise _Refused(detail)
        if response.status_code == 409 and _code(response) == CANCELLED_CODE:
            raise _Cancelled(f"HTTP 409: {detail}")
        raise _GiveUp(f"HTTP {response.status_code}: {detail}")

    async def _request(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            if self._token is None:
                self._token = await self._sign_in(http)
            return await http.post(path, json=body, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as exc:
            raise _Retry(" ".join(f"{type(exc).__name__}: {exc}".split())[:200]) from None

    async def _sign_in(self, http: httpx.AsyncClient) -> str:
        credentials = {"email": self._login.email, "password": self._login.password}
        response = await http.post("/auth/signin", json=credentials)
        if response.status_code in _RETRIED:
            raise _Retry(f"sign-in: HTTP {response.status_code}")
        if not response.is_success:
            raise _GiveUp(f"sign-in as {self._login.email}: {_detail(response)}")
        return str(response.json()["access_token"])


class _Refused(Exception):
    """The server refused one batch as invalid (422)."""


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return _text(str(detail if detail is not None else response.reason_phrase), 300)


def _code(response: httpx.Response) -> str | None:
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _text(value: str | None, limit: int) -> str:
    """One line without control characters, as the server takes free text."""
    return " ".join((value or "").split())[:limit]


def _figures(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics as the server takes them: named plainly, at most 64, null for NaN and Inf."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if len(out) == 64 or not _NAME.match(key):
            continue
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


def _names(ids: list[str]) -> list[str]:
    return [i for i in ids if _NAME.match(i)][:10_000]
