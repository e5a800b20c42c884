"""Sessions run from the command line, reported here (``fedhive coordinator --report-to URL``).

    POST /sessions/reported          open (201) or continue (200) the caller's reported session
    POST /sessions/{id}/events       a batch of its reports: started, client results, rounds, its end

The reporting user owns the session: it is listed, read, cancelled and deleted like the sessions
the platform runs (``api.sessions``), and nobody else can post to it (404, as for a missing one).
A session the platform runs takes no reports (409), nor does one that ended (409). A session
cancelled on the dashboard answers 409 with ``"code": "session_cancelled"`` besides its
``detail``, which tells its coordinator to end the session; an empty batch of events records
nothing and is answered as any other, so the coordinator asks it every report interval. What happens to the rows is in
``service.reported_sessions``. Each batch is one unit of work, so a retried batch (its answer lost)
writes the same rows again, never twice: rounds and client results are keyed by round and client.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedhive.api.deps import ServicesDep, UserDep
from fedhive.api.schemas import ID_PATTERN, MAX_INT, CleanText, SessionOut
from fedhive.api.sessions import session_view
from fedhive.runtime.session_config import SessionConfig
from fedhive.service import reported_sessions as reported
from fedhive.storage.models import ResultStatus, SessionStatus
from fedhive.web.live import LiveFeed

MAX_CONFIG_BYTES = 64 * 1024  # a session file's settings; a data plan listing every client fits
MAX_EVENTS = 500  # per batch; the reporter sends at most this many
MAX_CLIENTS = 10_000  # in one started or round report
MAX_METRICS = 64

Name = Annotated[CleanText, Field(min_length=1, max_length=64)]
Figure = Annotated[float, Field(allow_inf_nan=False)] | None  # the reporter sends null for NaN/Inf
Metrics = Annotated[dict[Name, Figure], Field(max_length=MAX_METRICS)]
Round = Annotated[int, Field(ge=1, le=MAX_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]


class ReportedSessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(description="the session's settings, as the coordinator runs them")
    name: Annotated[CleanText | None, Field(max_length=100)] = None
    topology: Literal["star", "hierarchical"] = "star"

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, allow_nan=False)) > MAX_CONFIG_BYTES:
            raise ValueError(f"more than {MAX_CONFIG_BYTES} bytes of JSON")
        try:
            config = SessionConfig.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "config"
            raise ValueError(f"{where}: {first.get('msg', 'invalid')}") from None
        if re.fullmatch(ID_PATTERN, config.session_id) is None:
            raise ValueError("session_id: letters, digits, '_' and '-' only (it is part of URLs)")
        return config.model_dump(mode="json")


class StartedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["started"]
    clients: Annotated[list[Name], Field(max_length=MAX_CLIENTS)] = []


class ClientResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["client"]
    round: Round
    client_id: Name
    status: ResultStatus
    num_examples: Count = 0
    metrics: Metrics = {}
    reason: Annotated[CleanText | None, Field(max_length=500)] = None
    via: Name | None = Field(default=None, description="the combiner that carried its update")


class RoundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["round"]
    round: Round
    metrics: Metrics = {}
    train_metrics: Metrics = {}
    extra: Metrics = Field(default={}, description="the strategy's own figures for the round")
    num_updates: Count = 0
    num_selected: Count = 0
    missing: Annotated[list[Name], Field(max_length=MAX_CLIENTS)] = []
    bytes_received: Annotated[int, Field(ge=0, le=2**62)] = 0
    duration_s: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] = 0.0


class EndedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ended"]
    status: Literal["COMPLETED", "FAILED", "CANCELLED"]
    reason: Annotated[CleanText, Field(max_length=2000)] = ""


EventIn = Annotated[StartedIn | ClientResultIn | RoundIn | EndedIn, Field(discriminator="kind")]


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Empty: the coordinator asking whether its session goes on (a 409 with a code if it was cancelled).
    events: Annotated[list[EventIn], Field(max_length=MAX_EVENTS)]


class EventsOut(BaseModel):
    session_id: str
    status: SessionStatus = Field(description="the session's status once the batch is recorded")
    recorded: int


def _report(e: StartedIn | ClientResultIn | RoundIn | EndedIn) -> reported.Report:
    if isinstance(e, StartedIn):
        return reported.Started(e.clients)
    if isinstance(e, ClientResultIn):
        return reported.ClientResult(e.round, e.client_id, e.status, e.num_examples, e.metrics, e.reason, e.via)
    if isinstance(e, RoundIn):
        return reported.RoundDone(
            e.round, e.metrics, e.train_metrics, e.num_updates, e.num_selected, e.missing, e.bytes_received,
            e.duration_s, e.extra,
        )  # fmt: skip
    return reported.Ended(SessionStatus(e.status), e.reason)


async def open_session(body: ReportedSessionIn, services: ServicesDep, user: UserDep, response: Response) -> SessionOut:
    def write() -> tuple[SessionOut, bool]:
        with services.db.session() as s:
            row, created = reported.open_reported(
                s, user.user_id, body.config, rounds_total=int(body.config["rounds"]), name=body.name,
                topology=body.topology,
            )  # fmt: skip
            s.flush()
            return session_view(s, row), created

    try:
        out, created = await asyncio.to_thread(write)
    except reported.ReportRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    response.status_code = 201 if created else 200
    return out


async def post_events(
    body: EventsIn,
    services: ServicesDep,
    user: UserDep,
    request: Request,
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
) -> EventsOut | JSONResponse:
    reports = [_report(e) for e in body.events]

    def write() -> SessionStatus:
        with services.db.session() as s:
            return reported.apply_reports(s, user.user_id, session_id, reports)

    try:
        status = await asyncio.to_thread(write)
    except reported.ReportRefused as exc:
        if exc.code is None:
            raise HTTPException(exc.status, str(exc)) from None
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status)
    live: LiveFeed | None = getattr(request.app.state, "live", None)
    if live is not None:
        for e in body.events:
            _publish(live, session_id, e)
    return EventsOut(session_id=session_id, status=status, recorded=len(reports))


def _publish(live: LiveFeed, session_id: str, e: StartedIn | ClientResultIn | RoundIn | EndedIn) -> None:
    """The dashboard's live events, as a platform session's coordinator sends them (web.live)."""
    if isinstance(e, RoundIn):
        live.publish(
            {
                "type": "round",
                "session_id": session_id,
                "round": e.round,
                "metrics": e.metrics,
                "train_metrics": e.train_metrics,
                "updates": e.num_updates,
            }
        )
    elif isinstance(e, ClientResultIn) and e.status is ResultStatus.ACCEPTED:
        live.publish(
            {
                "type": "update",
                "session_id": session_id,
                "round": e.round,
                "client_id": e.client_id,
                "num_examples": e.num_examples,
                "metrics": e.metrics,
            }
        )
    elif isinstance(e, EndedIn):
        kind = e.status.lower()  # completed, failed, cancelled
        live.publish({"type": kind, "session_id": session_id, "reason": e.reason})


_REFUSED: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such session (or not yours)"},
    409: {
        "description": "the session is the platform's, or it already ended; cancelled on the platform: "
        '"code": "session_cancelled"'
    },
}


def routes() -> APIRouter:
    r = APIRouter(prefix="/sessions", tags=["sessions"])
    r.add_api_route(
        "/reported",
        open_session,
        methods=["POST"],
        status_code=201,
        summary="Open a session run from the command line, to report it here (200: it goes on)",
        responses={409: {"description": "the id is taken, the session ended, or too many are unfinished"}},
    )
    r.add_api_route(
        "/{session_id}/events",
        post_events,
        methods=["POST"],
        response_model=EventsOut,
        summary="Record a reported session's progress: started, client results, rounds, its end",
        responses=_REFUSED,
    )
    return r
