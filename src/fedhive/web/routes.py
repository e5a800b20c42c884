"""The dashboard served by ``fedhive serve``: pages under ``/ui``, its files under ``/static``.

Pages are server-rendered shells (Jinja2) that hold no user data: the token lives in the
browser's sessionStorage, not in a cookie, so the same bearer-token API serves the dashboard and
scripts alike and no CSRF defence is needed. The page script reads the API with that token, and
listens to ``/ui/events`` (server-sent events from the ``LiveFeed``) to refresh what changed when
it changed, instead of polling. ``EventSource`` cannot send headers, so that one endpoint takes
the token as a query parameter and checks it exactly as ``deps.current_user`` does.

A page opened without a token sends the browser to ``/ui/signin?next=<the page>``; after signing in
it goes back there. ``next`` is checked here (``same_site_page``) before the sign-in page holds it:
only a path of this dashboard is kept, so a crafted link cannot send someone who signs in to
another site (no open redirect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, cast

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from fedhive.api.deps import ServicesDep, SettingsDep, UserDep
from fedhive.api.schemas import ID_PATTERN
from fedhive.api.security import AuthError, read_token
from fedhive.api.sessions import owned_session
from fedhive.service.services import Services
from fedhive.web.live import LiveFeed
from fedhive.web.summary import SessionListRow, SessionSummary, session_summary, sessions_overview

log = logging.getLogger("fedhive.web")
_HERE = FilePath(__file__).parent
PAGES = {"sessions": "Sessions", "new": "New session", "sites": "Sites", "models": "Models"}
HOME = "/ui"
# The MLflow run link of a session page waits this long for the tracking server, then says so.
MLFLOW_LOOKUP_S = 10.0
_PAGE_PATH = re.compile(r"/ui(/[A-Za-z0-9._~%/-]*)?")
# An open stream ends after this long and the browser's EventSource reconnects by itself: a
# server shutting down never waits on a dashboard left open for days.
STREAM_LIFETIME_S = 300.0
KEEPALIVE_S = 15.0


def _templates() -> Jinja2Templates:
    return Jinja2Templates(directory=_HERE / "templates")


def _live(request: Request) -> LiveFeed:
    return cast(LiveFeed, request.app.state.live)


def routes() -> APIRouter:
    templates = _templates()
    r = APIRouter(prefix="/ui", include_in_schema=False)

    def page(name: str, template: str) -> None:
        async def render(request: Request) -> HTMLResponse:
            context = {
                "page": name,
                "pages": PAGES,
                "session_id": request.path_params.get("session_id", ""),
                "next": same_site_page(request.query_params.get("next")) if name == "signin" else "",
            }
            return templates.TemplateResponse(request, template, context)

        r.add_api_route(f"/{name}" if name != "sessions" else "", render, methods=["GET"], name=f"ui-{name}")

    page("sessions", "sessions.html")
    page("signin", "signin.html")
    page("new", "new_session.html")
    page("sites", "sites.html")
    page("models", "models.html")

    async def peers_page() -> RedirectResponse:  # the page's old name: bookmarks still work
        return RedirectResponse(f"{HOME}/sites")

    async def session_page(request: Request, session_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> HTMLResponse:
        context = {"page": "session", "pages": PAGES, "session_id": session_id, "next": ""}
        return templates.TemplateResponse(request, "session.html", context)

    r.add_api_route("/peers", peers_page, methods=["GET"])
    r.add_api_route("/sessions/{session_id}", session_page, methods=["GET"])
    r.add_api_route("/data/sessions", overview, methods=["GET"])
    r.add_api_route("/data/sessions/{session_id}", summary, methods=["GET"])
    r.add_api_route("/data/sessions/{session_id}/mlflow", mlflow_run, methods=["GET"])
    r.add_api_route("/events", events, methods=["GET"])
    return r


def same_site_page(target: str | None) -> str:
    """``target`` if it is a page of this dashboard (a path under /ui, with an optional query),
    else /ui. Anything that a browser could read as another origin is refused: a scheme, a
    network path (``//host``), a backslash, an encoded one, control characters, ``..``."""
    if not target or len(target) > 2048:
        return HOME
    path, _, query = target.partition("?")
    if not _PAGE_PATH.fullmatch(path) or "//" in path or ".." in path or "%5c" in path.lower():
        return HOME
    if query and not re.fullmatch(r"[A-Za-z0-9._~%&=+-]*", query):
        return HOME
    return target


async def overview(services: ServicesDep, user: UserDep) -> list[SessionListRow]:
    return await asyncio.to_thread(sessions_overview, services, user.user_id)


class MlflowRunOut(BaseModel):
    configured: bool  # the platform tracks sessions in MLflow
    run_id: str | None = None
    status: str | None = None  # RUNNING, FINISHED, FAILED, KILLED
    url: str | None = None  # the run's page on the tracking server (None: a local store)
    error: str | None = None  # why the run could not be looked up


async def mlflow_run(services: ServicesDep, user: UserDep, session_id: str) -> MlflowRunOut:
    """The session's MLflow run, looked up by its tag in the platform's tracking store."""
    await asyncio.to_thread(_check_owner, services, session_id, user.user_id)
    uri = services.settings.mlflow_tracking_uri
    if uri is None:
        return MlflowRunOut(configured=False)
    from fedhive.tracking.mlflow_registry import check_reachable, redact
    from fedhive.tracking.session_runs import SessionRun, find_session_run

    def look_up() -> SessionRun | None:
        check_reachable(uri)
        return find_session_run(uri, session_id)

    try:
        run = await asyncio.wait_for(asyncio.to_thread(look_up), MLFLOW_LOOKUP_S)
    except Exception as exc:  # the page shows the rest; the log says what went wrong
        log.warning("MLflow run of session %s: %s", session_id, " ".join(str(exc).split())[:300])
        return MlflowRunOut(configured=True, error=f"the MLflow store {redact(uri)} did not answer")
    if run is None:
        return MlflowRunOut(configured=True)
    return MlflowRunOut(configured=True, run_id=run.run_id, status=run.status, url=run.url)


async def summary(services: ServicesDep, user: UserDep, session_id: str) -> SessionSummary:
    return await asyncio.to_thread(session_summary, services, session_id, user.user_id)


async def events(
    request: Request,
    services: ServicesDep,
    settings: SettingsDep,
    token: Annotated[str, Query(max_length=4096)],
    session: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """``text/event-stream`` of one session's events (or all), plus peer events for everyone signed in."""
    claims = read_token(token, secret=settings.jwt_secret.get_secret_value())  # AuthError: 401
    try:
        user_id = int(claims.user_id)
    except ValueError:
        raise AuthError("invalid token") from None
    if session is not None:
        await asyncio.to_thread(_check_owner, services, session, user_id)
    feed = _live(request)
    return StreamingResponse(
        _sse(feed, session),
        media_type="text/event-stream",
        # no-transform/X-Accel-Buffering: proxies must not hold events back to batch them
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


def _check_owner(services: Services, session_id: str, user_id: int) -> None:
    with services.db.session(read_only=True) as s:
        owned_session(s, session_id, user_id)  # 404 for another user's session


async def _sse(feed: LiveFeed, session_id: str | None) -> AsyncIterator[str]:
    sub = feed.subscribe(session_id)
    try:
        yield "retry: 2000\n\n"
        loop = asyncio.get_running_loop()
        ends = loop.time() + STREAM_LIFETIME_S
        while loop.time() < ends:
            item = await sub.next(KEEPALIVE_S)
            # a comment line keeps proxies and the browser from closing an idle connection
            yield ": keep-alive\n\n" if item is None else f"event: {item['type']}\ndata: {json.dumps(item)}\n\n"
    finally:
        sub.close()


def mount(app: FastAPI, live: LiveFeed) -> None:
    """Adds the dashboard to ``app``: pages, event stream, static files, ``/`` -> ``/ui``."""
    app.state.live = live
    app.include_router(routes())
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")

    async def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
