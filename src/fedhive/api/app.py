"""The REST API: ``create_app(settings, services)`` composes small routers, like starlette's
``Starlette(routes=...)``; nothing is global, so two apps (or two tests) never share state.

Routes (every one but ``/health``, ``/auth/signup`` and ``/auth/signin`` needs a bearer token):

    GET    /health                                 liveness and database check
    POST   /auth/signup, /auth/signin              accounts and tokens          (api.auth)
    POST   /sessions/start                         start training              (api.session_start)
    GET    /sessions, /sessions/{id}, .../training-status, .../rounds
    POST   /sessions/{id}/cancel;  DELETE /sessions/{id}                     (api.sessions)
    POST   /sessions/reported, /sessions/{id}/events  command-line sessions   (api.reported)
    POST   /sessions/reported/model                   their final models      (api.reported_model)
    GET    /datasets, /datasets/{id}                                          (api.datasets)
    GET    /peers;  POST /peers (admin)                                       (api.peers)
    GET    /sites   peers with what their site agents announced               (api.sites)
    GET    /apps                                   the installed apps           (api.apps)
    POST   /models;  GET /models, /models/{name}/versions[/{v}[/download]]   (api.models)
    GET    /ui/..., /static/...  the dashboard; /ui/events: server-sent events     (web.routes)

Every response carries security headers (CSP, nosniff, no framing, no referrer: api.security_headers);
sign-ins are throttled and bcrypt work is bounded (api.signin_guard).

``settings`` governs everything HTTP (limits, tokens, bcrypt cost); ``services.settings`` is what
the services were built from, normally the same object. The app does not own the services: whoever
built them closes them (``Services.close``) after the server stops. OpenAPI is at ``/docs``.
"""

from __future__ import annotations

import asyncio
import secrets

from fastapi import FastAPI

from fedhive.api import apps, auth, datasets, models, peers, reported, reported_model, session_start, sessions, sites
from fedhive.api.body_limit import BodyLimit
from fedhive.api.deps import ServicesDep
from fedhive.api.errors import install_error_handlers
from fedhive.api.schemas import Health
from fedhive.api.security import hash_password
from fedhive.api.security_headers import SecurityHeaders
from fedhive.api.signin_guard import SigninGuard
from fedhive.service.services import Services
from fedhive.service.settings import Settings
from fedhive.web import routes as web
from fedhive.web.live import LiveFeed

# Bodies that are not uploads (JSON: credentials, a peer's name) are small; this bounds what any
# route reads into memory. The upload routes allow max_upload_bytes plus the form around the file.
JSON_BODY_LIMIT_BYTES = 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024
UPLOAD_ROUTES = (("POST", "/sessions/start"), ("POST", "/models"), ("POST", reported_model.PATH))


async def health(services: ServicesDep) -> Health:
    await asyncio.to_thread(services.db.ping)  # StorageError: 503
    return Health(status="ok", database="ok")


def create_app(settings: Settings, services: Services, live: LiveFeed | None = None) -> FastAPI:
    app = FastAPI(
        title="fedhive",
        summary="Federated learning platform: accounts, sessions, peers, model registry",
        version="0.1.0",
        docs_url="/docs",
    )
    app.state.services = services
    app.state.settings = settings
    # Sign-in checks unknown e-mails against this, at the same bcrypt cost as real accounts.
    app.state.dummy_password_hash = hash_password(secrets.token_urlsafe(24), rounds=settings.bcrypt_rounds)
    app.state.signin_guard = SigninGuard(settings)
    install_error_handlers(app)
    upload_limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.add_middleware(
        BodyLimit,
        default=JSON_BODY_LIMIT_BYTES,
        routes=dict.fromkeys(UPLOAD_ROUTES, upload_limit),
        hint=f" (an uploaded file may have {settings.max_upload_bytes} bytes)",
    )
    app.add_middleware(SecurityHeaders)  # added last, so outermost: errors and 413s get the headers too
    app.add_api_route(
        "/health", health, methods=["GET"], tags=["health"], responses={503: {"description": "database unreachable"}}
    )
    app.include_router(auth.routes())
    app.include_router(session_start.routes())  # before /sessions/{id}: "start" is no id
    app.include_router(reported_model.routes())  # nor is "reported"
    app.include_router(reported.routes())  # so is "reported"
    app.include_router(sessions.routes())
    app.include_router(datasets.routes())
    app.include_router(peers.routes())
    app.include_router(sites.routes())
    app.include_router(models.routes())
    app.include_router(apps.routes())
    # The dashboard (/ui, /static); without a feed wired to the buses its pages still work, unlive.
    web.mount(app, live if live is not None else LiveFeed())
    return app
