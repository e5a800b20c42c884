"""Passwords and access tokens.

Passwords are hashed with bcrypt (salted, deliberately slow); the plain password never leaves
this module and is never logged. Access tokens are JWTs signed with HS256 and an expiry; a token
that is expired, forged or malformed is an ``AuthError`` (the API answers 401).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import bcrypt
import jwt

from fedhive.errors import FedhiveError

_ALGORITHM = "HS256"
# bcrypt only reads the first 72 bytes of a password; longer ones are refused rather than
# silently truncated (two long passwords sharing a prefix would otherwise be the same password).
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_CHARS = 8


class AuthError(FedhiveError):
    """Missing, expired, forged or malformed credentials."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    role: str
    expires_at: int


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise AuthError(f"password must be at most {MAX_PASSWORD_BYTES} bytes")


def hash_password(password: str, *, rounds: int = 12) -> str:
    check_password_rules(password)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], hashed.encode())
    except ValueError:  # a malformed stored hash: never a match
        return False


def issue_token(user_id: str, role: str, *, secret: str, ttl_s: int = 3600, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {"sub": user_id, "role": role, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def read_token(token: str, *, secret: str) -> TokenClaims:
    try:
        claims = jwt.decode(token, secret, algorithms=[_ALGORITHM], options={"require": ["sub", "exp", "role"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    return TokenClaims(str(claims["sub"]), str(claims["role"]), int(claims["exp"]))
