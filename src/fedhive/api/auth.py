"""Accounts: ``POST /auth/signup``, ``POST /auth/signin``, and the operator's admin bootstrap.

Admins: no HTTP request can make anyone an admin. Signing up always creates a plain user; the
operator creates admin accounts with ``create_admin`` (exposed by the CLI), which needs access
to the database, i.e. to the server itself. "First user becomes admin" was rejected: on a
service reachable before its operator signs up, a stranger could win that race.

Nothing here tells a caller which e-mails have accounts:
- sign-up answers 201 with the same body whether the e-mail was free (the account is created) or
  taken (nothing changes; its owner's password stays as it was), after the same bcrypt work;
- sign-in checks a password even for an unknown e-mail (against a dummy hash made when the app is
  built) and answers the same 401, and its throttles count unknown e-mails like known ones.

bcrypt is slow on purpose (~0.25 s at the default 12 rounds), so it runs in a worker thread,
outside any unit of work (on SQLite a unit of work holds the write lock), and only as many at once
as ``SigninGuard`` allows; failed sign-ins are throttled per account and per address (429 with
Retry-After). See ``api.signin_guard``.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from fedhive.api.deps import ServicesDep, SettingsDep, client_address
from fedhive.api.schemas import Credentials, TokenOut, UserOut
from fedhive.api.security import AuthError, check_password_rules, hash_password, issue_token, verify_password
from fedhive.api.signin_guard import SigninGuard
from fedhive.service.services import Services
from fedhive.storage import users_repo
from fedhive.storage.database import AlreadyExists, Database
from fedhive.storage.models import Role, UserRow

WRONG_CREDENTIALS = "wrong e-mail or password"
SIGNED_UP = "if this e-mail had no account, it has one now: sign in with its password"


class SignupOut(BaseModel):
    """The answer to every valid sign-up, whether or not the e-mail already had an account."""

    email: str
    detail: str = SIGNED_UP


def _user_out(user: UserRow) -> UserOut:
    return UserOut(id=user.id, email=user.email, role=user.role, created_at=user.created_at)


def _valid_password(password: str) -> None:
    """The password rules, as a 422 (an ``AuthError`` would be a 401)."""
    try:
        check_password_rules(password)
    except AuthError as exc:
        raise HTTPException(422, f"password: {exc}") from None


def _insert(db: Database, email: str, hashed: str, role: Role) -> UserOut:
    with db.session() as s:
        return _user_out(users_repo.create_user(s, email, hashed, role=role))


def create_account(db: Database, email: str, password: str, *, rounds: int, role: Role = Role.USER) -> UserOut:
    """Hash, then insert (blocking). ``AlreadyExists`` (409) if the e-mail is taken: for the
    operator, who may know; the sign-up route never says so."""
    _valid_password(password)
    return _insert(db, email, hash_password(password, rounds=rounds), role)


def create_admin(services: Services, email: str, password: str) -> UserOut:
    """The operator's way to an admin account (``fedhive`` CLI; blocking). Not an HTTP route."""
    return create_account(services.db, email, password, rounds=services.settings.bcrypt_rounds, role=Role.ADMIN)


def _guard(request: Request) -> SigninGuard:
    guard: SigninGuard = request.app.state.signin_guard
    return guard


async def signup(body: Credentials, request: Request, services: ServicesDep, settings: SettingsDep) -> SignupOut:
    _valid_password(body.password)
    async with _guard(request).hashing():
        hashed = await asyncio.to_thread(hash_password, body.password, rounds=settings.bcrypt_rounds)
    with contextlib.suppress(AlreadyExists):  # the same answer as for a new account: see the docstring
        await asyncio.to_thread(_insert, services.db, body.email, hashed, Role.USER)
    return SignupOut(email=users_repo.normalise_email(body.email))


async def signin(body: Credentials, request: Request, services: ServicesDep, settings: SettingsDep) -> TokenOut:
    dummy_hash: str = request.app.state.dummy_password_hash
    guard = _guard(request)
    account, address = users_repo.normalise_email(body.email), client_address(request)
    guard.check(account, address)  # cheap: a throttled caller costs no bcrypt

    def check() -> TokenOut | None:
        with services.db.session(read_only=True) as s:
            user = users_repo.get_user_by_email(s, account)
            found = (user.id, user.role, user.password_hash) if user is not None else None
        matches = verify_password(body.password, found[2] if found else dummy_hash)
        if found is None or not matches:
            return None
        user_id, role, _ = found
        token = issue_token(
            str(user_id), role.value, secret=settings.jwt_secret.get_secret_value(), ttl_s=settings.token_ttl_s
        )
        return TokenOut(access_token=token, expires_in=settings.token_ttl_s)

    async with guard.hashing():
        guard.check(account, address)  # again: failures recorded while this request waited count
        token = await asyncio.to_thread(check)
        if token is None:
            guard.failed(account, address)
            raise AuthError(WRONG_CREDENTIALS)
    guard.succeeded(account)
    return token


def routes() -> APIRouter:
    r = APIRouter(prefix="/auth", tags=["auth"])
    r.add_api_route(
        "/signup",
        signup,
        methods=["POST"],
        status_code=201,
        summary="Create an account (role: user); the same answer whether or not the e-mail had one",
        responses={
            422: {"description": "invalid e-mail or password"},
            503: {"description": "too many passwords being checked; see Retry-After"},
        },
    )
    r.add_api_route(
        "/signin",
        signin,
        methods=["POST"],
        summary="Exchange e-mail and password for a bearer token",
        responses={
            401: {"description": WRONG_CREDENTIALS},
            429: {"description": "too many failed sign-ins for this account or from this address; see Retry-After"},
            503: {"description": "too many passwords being checked; see Retry-After"},
        },
    )
    return r
