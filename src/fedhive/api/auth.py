"""Accounts: ``POST /auth/signup``, ``POST /auth/signin``, and the operator's admin bootstrap.

Admins: no HTTP request can make anyone an admin. Signing up always creates a plain user; the
operator creates admin accounts with ``create_admin`` (exposed by the CLI), which needs access
to the database, i.e. to the server itself. "First user becomes admin" was rejected: on a
service reachable before its operator signs up, a stranger could win that race.

bcrypt is slow on purpose (~0.25 s at the default 12 rounds), so it runs in a worker thread and
outside any unit of work (on SQLite a unit of work holds the write lock). Sign-in checks a
password even for an unknown e-mail (against a dummy hash made when the app is built), so the
answer's timing does not tell which e-mails have accounts.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request

from fedhive.api.deps import ServicesDep, SettingsDep
from fedhive.api.schemas import Credentials, TokenOut, UserOut
from fedhive.api.security import AuthError, check_password_rules, hash_password, issue_token, verify_password
from fedhive.service.services import Services
from fedhive.storage import users_repo
from fedhive.storage.database import Database
from fedhive.storage.models import Role, UserRow

WRONG_CREDENTIALS = "wrong e-mail or password"


def _user_out(user: UserRow) -> UserOut:
    return UserOut(id=user.id, email=user.email, role=user.role, created_at=user.created_at)


def create_account(db: Database, email: str, password: str, *, rounds: int, role: Role = Role.USER) -> UserOut:
    """Hash, then insert (blocking). ``AlreadyExists`` (409) if the e-mail is taken; the password
    rules are a 422 here rather than the 401 an ``AuthError`` would give."""
    try:
        check_password_rules(password)
    except AuthError as exc:
        raise HTTPException(422, f"password: {exc}") from None
    hashed = hash_password(password, rounds=rounds)
    with db.session() as s:
        return _user_out(users_repo.create_user(s, email, hashed, role=role))


def create_admin(services: Services, email: str, password: str) -> UserOut:
    """The operator's way to an admin account (``fedhive`` CLI; blocking). Not an HTTP route."""
    return create_account(services.db, email, password, rounds=services.settings.bcrypt_rounds, role=Role.ADMIN)


async def signup(body: Credentials, services: ServicesDep, settings: SettingsDep) -> UserOut:
    return await asyncio.to_thread(
        create_account, services.db, body.email, body.password, rounds=settings.bcrypt_rounds
    )


async def signin(body: Credentials, request: Request, services: ServicesDep, settings: SettingsDep) -> TokenOut:
    dummy_hash: str = request.app.state.dummy_password_hash

    def check() -> TokenOut:
        with services.db.session(read_only=True) as s:
            user = users_repo.get_user_by_email(s, body.email)
            account = (user.id, user.role, user.password_hash) if user is not None else None
        matches = verify_password(body.password, account[2] if account else dummy_hash)
        if account is None or not matches:
            raise AuthError(WRONG_CREDENTIALS)
        user_id, role, _ = account
        token = issue_token(
            str(user_id), role.value, secret=settings.jwt_secret.get_secret_value(), ttl_s=settings.token_ttl_s
        )
        return TokenOut(access_token=token, expires_in=settings.token_ttl_s)

    return await asyncio.to_thread(check)


def routes() -> APIRouter:
    r = APIRouter(prefix="/auth", tags=["auth"])
    r.add_api_route(
        "/signup",
        signup,
        methods=["POST"],
        status_code=201,
        summary="Create an account (role: user)",
        responses={409: {"description": "the e-mail is taken"}, 422: {"description": "invalid e-mail or password"}},
    )
    r.add_api_route(
        "/signin",
        signin,
        methods=["POST"],
        summary="Exchange e-mail and password for a bearer token",
        responses={401: {"description": WRONG_CREDENTIALS}},
    )
    return r
