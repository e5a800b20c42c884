"""Security headers on every HTTP response: dashboard pages, static files, API answers, errors.

- ``Content-Security-Policy``: the dashboard (``/ui``) loads only its own scripts, styles and
  server-sent events (no inline script or style attribute anywhere in its templates, so none is
  allowed), and no page may be framed (``frame-ancestors 'none'``, against clickjacking). An
  injected ``<script>`` or inline handler in a page therefore does not run.
- The OpenAPI pages (``/docs``, ``/redoc``) are FastAPI's: they load Swagger UI and ReDoc from
  cdn.jsdelivr.net and start them with an inline script, so their policy allows exactly that. They
  show the API's schema, never user data.
- ``X-Content-Type-Options: nosniff`` (a download is never run as a script or page),
  ``X-Frame-Options: DENY`` (``frame-ancestors`` for older browsers), ``Referrer-Policy:
  no-referrer`` (a session id in a URL never leaves in a Referer header).

Headers a route sets itself are kept. A pure ASGI middleware (not ``BaseHTTPMiddleware``), so the
dashboard's event stream is passed through as it is produced.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' 'unsafe-inline' {_CDN}",
        f"style-src 'self' 'unsafe-inline' {_CDN} https://fonts.googleapis.com",
        "font-src 'self' https://fonts.gstatic.com",
        "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
DOCS_PATHS = ("/docs", "/redoc")
FIXED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def policy_for(path: str) -> str:
    docs = any(path == p or path.startswith(p + "/") for p in DOCS_PATHS)
    return DOCS_POLICY if docs else PAGE_POLICY


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(str(scope["path"]))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                for name, value in FIXED_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
