"""Request body limits, enforced while the body streams in: 413 ``{"detail": ...}`` past the limit.

Each route has a limit: the upload routes allow ``max_upload_bytes`` plus room for the form
around the file, every other route a small one (JSON bodies are read whole into memory). A
declared ``Content-Length`` over the limit is refused before a byte of the body is read; a body
without one (chunked) is counted as it arrives and cut off at the limit, so no request makes the
server read, spool or hold more than its route's limit.

Not FastAPI's own ``max_body_size``: Starlette's limiter replaces every answer to an oversized
request with a plain-text "Content Too Large", and the API promises JSON error bodies.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedhive.api.errors import error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, *, default: int, routes: Mapping[tuple[str, str], int], hint: str = "") -> None:
        """``routes`` maps (method, path) to that route's limit in bytes; ``hint`` is added to
        their 413s (the size that matters to the user is the file's, not the whole body's)."""
        self.app = app
        self.default = default
        self.routes = dict(routes)
        self.hint = hint

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        path = str(scope["path"])
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        limit = self.routes.get((str(scope["method"]), path))
        return (self.default, "") if limit is None else (limit, self.hint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, hint = self.limit_for(scope)
        detail = f"request body is over the limit of {limit} bytes for {scope['method']} {scope['path']}{hint}"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await error_response(413, detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the body parser; FastAPI passes HTTPExceptions through to the
                    # app's handler, which answers with the JSON body.
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server rejects a malformed header; the counting still applies
