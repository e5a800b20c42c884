"""Account enumeration through sign-up: a new e-mail and one that has an account get the very same
answer (status, body, headers), and signing up a taken e-mail changes nothing about that account."""

from __future__ import annotations

import httpx
from guarded_app import PASSWORD, GuardedFactory

# Headers that differ between any two responses (the clock) or with the body's length.
VARYING = {"date", "content-length"}


def answer(response: httpx.Response) -> tuple[int, object, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in VARYING}
    return response.status_code, response.json(), headers


async def test_a_new_and_an_existing_email_get_the_same_answer(guarded: GuardedFactory) -> None:
    async with guarded() as g:
        await g.signup("ann@example.org")
        async with g.client() as http:
            taken = await http.post("/auth/signup", json={"email": "ann@example.org", "password": "other password"})
            fresh = await http.post("/auth/signup", json={"email": "bob@example.org", "password": "other password"})
            ann = await http.post("/auth/signin", json={"email": "ann@example.org", "password": "other password"})
    status, body, headers = answer(taken)
    assert status == 201
    assert answer(fresh) == (status, {**body, "email": "bob@example.org"}, headers)  # type: ignore[dict-item]
    assert "exist" not in taken.text and "taken" not in taken.text
    assert ann.status_code == 401  # the taken account kept its own password


async def test_a_weak_password_is_refused_alike_for_both(guarded: GuardedFactory) -> None:
    async with guarded() as g:
        await g.signup("ann@example.org")
        async with g.client() as http:
            taken = await http.post("/auth/signup", json={"email": "ann@example.org", "password": "short"})
            fresh = await http.post("/auth/signup", json={"email": "bob@example.org", "password": "short"})
    assert answer(taken) == answer(fresh)
    assert taken.status_code == 422 and PASSWORD not in taken.text
