"""fedhive's errors -> HTTP answers, at the boundary (like httpx's ``map_httpcore_exceptions``).

Every error body is ``{"detail": "<one line>"}``. A user's mistake gets its message (it names
the row, the column, the option); a failure of ours gets a generic line, and its traceback goes
to the server log only, never to the client.

    NotEnoughPeers          400  (service.launcher)
    AuthError               401  with WWW-Authenticate: Bearer
    NotFound                404
    AlreadyExists           409
    ConfigError, DataError,
    PayloadError, AppError,
    SessionFailed           422
    StorageError,
    TransportError          503  (logged; the detail does not name hosts or databases)
    anything else           500  (logged with its traceback)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedhive.api.security import AuthError
from fedhive.errors import (
    AppError,
    ConfigError,
    DataError,
    FedhiveError,
    PayloadError,
    SessionFailed,
    StorageError,
    TransportError,
)
from fedhive.service.launcher import NotEnoughPeers
from fedhive.storage.database import AlreadyExists, NotFound

log = logging.getLogger("fedhive.api")

_MAX_DETAIL = 500  # one line a person reads, not a dump of the input
_UNAVAILABLE = "the platform's storage or broker is unavailable; try again later"
_INTERNAL = "internal server error"


def one_line(text: object) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_DETAIL else flat[: _MAX_DETAIL - 3] + "..."


def error_response(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": one_line(detail)}, status_code=status, headers=headers)


def status_for(exc: FedhiveError) -> int:
    # Order matters: NotFound and AlreadyExists are StorageErrors with their own answers.
    if isinstance(exc, NotEnoughPeers):
        return 400
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, AlreadyExists):
        return 409
    if isinstance(exc, ConfigError | DataError | PayloadError | AppError | SessionFailed):
        return 422
    if isinstance(exc, StorageError | TransportError):
        return 503
    return 500


async def fedhive_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FedhiveError)  # registered for FedhiveError only
    status = status_for(exc)
    if status == 503:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, _UNAVAILABLE)
    if status == 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, _INTERNAL)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc, headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, dict(exc.headers) if exc.headers else None)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    where = ".".join(loc[1:] if len(loc) > 1 else loc) or "request"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return error_response(422, f"{where}: {first.get('msg', 'invalid')}{more}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FedhiveError, fedhive_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """The last net: an exception no handler took becomes a logged 500 with a one-line body.

    Starlette's own ``Exception`` handler re-raises after answering (so servers log it twice and
    in-process clients see the exception); this middleware answers and stops there. A failure
    after the response started cannot be answered any more: it is logged and the connection
    dropped, so the client sees a truncated response rather than a wrong one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            await error_response(500, _INTERNAL)(scope, receive, send)
