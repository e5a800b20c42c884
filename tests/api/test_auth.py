"""Accounts and tokens: sign up, sign in, and what every protected route does without a good token."""

from __future__ import annotations

import pytest
from api_harness import PASSWORD, Api, one_line_detail

from fedhive.api.auth import SIGNED_UP, create_admin
from fedhive.api.security import issue_token
from fedhive.storage import users_repo
from fedhive.storage.database import AlreadyExists
from fedhive.storage.models import Role

PROTECTED = [
    ("GET", "/sessions"),
    ("GET", "/sessions/abc"),
    ("GET", "/sessions/abc/training-status"),
    ("GET", "/sessions/abc/rounds"),
    ("POST", "/sessions/abc/cancel"),
    ("DELETE", "/sessions/abc"),
    ("POST", "/sessions/start"),
    ("GET", "/peers"),
    ("POST", "/peers"),
    ("GET", "/models"),
    ("POST", "/models"),
    ("GET", "/models/m/versions/1"),
    ("GET", "/models/m/versions/1/download"),
    ("GET", "/datasets"),
]


async def test_signup_then_signin_gives_a_bearer_token(api: Api) -> None:
    response = await api.client.post("/auth/signup", json={"email": "Ann@Example.org", "password": PASSWORD})
    assert response.status_code == 201
    assert response.json() == {"email": "ann@example.org", "detail": SIGNED_UP}
    assert PASSWORD not in response.text and "$2b$" not in response.text
    signin = await api.client.post("/auth/signin", json={"email": "ann@example.org", "password": PASSWORD})
    assert signin.status_code == 200
    token = signin.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == api.services.settings.token_ttl_s
    mine = await api.client.get("/sessions", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert mine.status_code == 200 and mine.json() == []
    with api.services.db.session(read_only=True) as s:
        user = users_repo.get_user_by_email(s, "ann@example.org")
        assert user is not None and user.role is Role.USER


async def test_passwords_are_stored_as_bcrypt_hashes(api: Api) -> None:
    await api.user("ann@example.org")
    with api.services.db.session(read_only=True) as s:
        user = users_repo.get_user_by_email(s, "ann@example.org")
        assert user is not None and user.password_hash.startswith("$2b$") and PASSWORD not in user.password_hash


async def test_signing_up_a_taken_email_changes_nothing_whatever_its_case(api: Api) -> None:
    await api.user("ann@example.org")
    again = await api.client.post("/auth/signup", json={"email": "ANN@example.org", "password": "another pass"})
    assert again.status_code == 201 and again.json() == {"email": "ann@example.org", "detail": SIGNED_UP}
    await api.signin("ann@example.org")  # the first password still works
    taken = await api.client.post("/auth/signin", json={"email": "ann@example.org", "password": "another pass"})
    assert taken.status_code == 401


async def test_the_operator_is_told_when_an_admin_email_is_taken(api: Api) -> None:
    await api.user("ann@example.org")
    with pytest.raises(AlreadyExists, match="already exists"):
        create_admin(api.services, "ann@example.org", PASSWORD)


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [("not-an-email", PASSWORD, "email"), ("ann@example.org", "short", "password"), ("a@b.c", "x" * 80, "password")],
)
async def test_bad_signups_are_422_naming_the_field(api: Api, email: str, password: str, field: str) -> None:
    response = await api.client.post("/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 422
    assert one_line_detail(response.json()).startswith(field)


async def test_wrong_password_and_unknown_email_get_the_same_401(api: Api) -> None:
    await api.user("ann@example.org")
    wrong = await api.client.post("/auth/signin", json={"email": "ann@example.org", "password": "wrong password"})
    unknown = await api.client.post("/auth/signin", json={"email": "nobody@example.org", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert one_line_detail(wrong.json()) == one_line_detail(unknown.json()) == "wrong e-mail or password"
    assert wrong.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_route_needs_a_token(api: Api, method: str, path: str) -> None:
    response = await api.client.request(method, path)
    assert response.status_code == 401, response.text
    assert "Authorization: Bearer" in one_line_detail(response.json())


async def test_expired_forged_and_malformed_tokens_are_401(api: Api) -> None:
    await api.user("ann@example.org")
    user_id = str(api.user_id("ann@example.org"))
    secret = api.services.settings.jwt_secret.get_secret_value()
    tokens = {
        "expired": issue_token(user_id, "user", secret=secret, ttl_s=60, now=1_000_000),
        "forged": issue_token(user_id, "admin", secret="not-the-server-secret-" + "y" * 20),
        "garbage": "not.a.jwt",
        "not a user id": issue_token("ann", "user", secret=secret),
    }
    for what, token in tokens.items():
        response = await api.client.get("/sessions", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, what
        one_line_detail(response.json())
    basic = await api.client.get("/sessions", headers={"Authorization": "Basic YW5uOnB3"})
    assert basic.status_code == 401


async def test_health_and_docs_need_no_token(api: Api) -> None:
    health = await api.client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}
    assert (await api.client.get("/docs")).status_code == 200
    spec = (await api.client.get("/openapi.json")).json()
    assert "/sessions/start" in spec["paths"] and "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_signing_up_never_makes_an_admin(api: Api) -> None:
    first = await api.user("first@example.org")
    response = await api.client.post("/peers", json={"name": "edge-1"}, headers=first)
    assert response.status_code == 403
    assert "admin" in one_line_detail(response.json())
    signup = await api.client.post(
        "/auth/signup", json={"email": "x@example.org", "password": PASSWORD, "role": "admin"}
    )
    assert signup.status_code == 422  # unknown fields are refused, not ignored
