"""Dependencies every route shares: this app's ``Services`` and the caller's identity.

Blocking work and the event loop: every route is ``async def`` and hands each blocking step
(bcrypt, CSV parsing, safetensors checks, a unit of work on the synchronous SQLAlchemy engine,
artifact I/O) to a worker thread with ``await asyncio.to_thread(...)``, one hop per step. One
rule for every route, rather than sync routes in FastAPI's threadpool, because the launcher's
``start``/``cancel`` are coroutines: a sync route could not await them. ORM rows never leave the
thread that read them; the threads return pydantic models.

Identity comes from the bearer token alone (an HMAC check, cheap enough for the loop). Routes
that act for the user, or need the admin role, load the user row in their own unit of work: a
deleted user then gets 404, and a demoted admin loses the role at once, not when the token expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fedhive.api.security import AuthError, read_token
from fedhive.service.services import Services
from fedhive.service.settings import Settings
from fedhive.storage import users_repo
from fedhive.storage.models import Role, UserRow

# Only declares the scheme (the "Authorize" button in /docs); it holds no state. auto_error=False:
# a missing token is our AuthError (401 with a one-line body), not FastAPI's own answer.
_bearer = HTTPBearer(auto_error=False, description="the access_token from POST /auth/signin")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the token says; ``role`` is informational (checks read the database)."""

    user_id: int
    role: str


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


def get_settings(request: Request) -> Settings:
    """The app's settings (``create_app``'s argument): limits, token secret and lifetime, bcrypt cost."""
    return cast(Settings, request.app.state.settings)


def client_address(request: Request) -> str:
    """Who is calling, as far as throttles go: the connection's peer address (behind a reverse
    proxy, the server must be told to trust its forwarded headers, or this is the proxy)."""
    return request.client.host if request.client is not None else "unknown"


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_user(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise AuthError("not signed in: send 'Authorization: Bearer <token>' (POST /auth/signin)")
    claims = read_token(credentials.credentials, secret=settings.jwt_secret.get_secret_value())
    try:
        user_id = int(claims.user_id)
    except ValueError:
        raise AuthError("invalid token") from None
    return Principal(user_id, claims.role)


UserDep = Annotated[Principal, Depends(current_user)]


def load_user(s: Session, principal: Principal) -> UserRow:
    """The caller's account; 404 if it was deleted after the token was issued."""
    user = users_repo.get_user(s, principal.user_id)
    if user is None:
        raise HTTPException(404, f"user {principal.user_id} does not exist")
    return user


def load_admin(s: Session, principal: Principal) -> UserRow:
    user = load_user(s, principal)
    if user.role is not Role.ADMIN:
        raise HTTPException(403, "this needs the admin role")
    return user
