"""Password guessing: failed sign-ins are throttled per account and per address (429 with
Retry-After), and a throttled account does not let even the right password through."""

from __future__ import annotations

import asyncio

import httpx
from guarded_app import PASSWORD, GuardedFactory


async def signin(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await http.post("/auth/signin", json={"email": email, "password": password})


def retry_after(response: httpx.Response, window_s: int) -> int:
    assert response.status_code == 429, response.text
    seconds = int(response.headers["retry-after"])
    assert 1 <= seconds <= window_s
    assert response.json()["detail"] == f"too many failed sign-ins; try again in {seconds} s"
    return seconds


async def test_thirty_wrong_passwords_then_the_right_one_is_429_not_200(guarded: GuardedFactory) -> None:
    async with guarded() as g:  # the default limits: 10 failures per account in 15 minutes
        await g.signup("ann@example.org")
        async with g.client() as http:
            answers = [await signin(http, "ann@example.org", f"guess number {i}") for i in range(30)]
            right = await signin(http, "ann@example.org", PASSWORD)
    assert [r.status_code for r in answers] == [401] * 10 + [429] * 20
    retry_after(right, 900)
    async with g.client("127.0.0.2") as elsewhere:  # the account is throttled from every address
        retry_after(await signin(elsewhere, "ann@example.org", PASSWORD), 900)


async def test_one_address_guessing_many_accounts_is_throttled_and_others_are_not(guarded: GuardedFactory) -> None:
    async with guarded(signin_failures_per_account=100, signin_failures_per_address=5) as g:
        await g.signup("ann@example.org")
        async with g.client("127.0.0.9") as attacker:
            answers = [await signin(attacker, f"user{i}@example.org", "wrong password") for i in range(8)]
            own_account = await signin(attacker, "ann@example.org", PASSWORD)
        async with g.client() as ann:
            assert (await signin(ann, "ann@example.org", PASSWORD)).status_code == 200
    assert [r.status_code for r in answers] == [401] * 5 + [429] * 3
    retry_after(own_account, 900)


async def test_unknown_and_known_emails_are_throttled_alike(guarded: GuardedFactory) -> None:
    async with guarded(signin_failures_per_account=3) as g:
        await g.signup("ann@example.org")
        async with g.client() as http:
            known = [(await signin(http, "ann@example.org", "wrong password")).status_code for _ in range(4)]
            unknown = [(await signin(http, "nobody@example.org", "wrong password")).status_code for _ in range(4)]
    assert known == unknown == [401, 401, 401, 429]


async def test_retry_after_is_when_signing_in_works_again(guarded: GuardedFactory) -> None:
    async with guarded(signin_failures_per_account=2, signin_window_s=2) as g:
        await g.signup("ann@example.org")
        async with g.client() as http:
            for _ in range(2):
                assert (await signin(http, "ann@example.org", "wrong password")).status_code == 401
            seconds = retry_after(await signin(http, "ann@example.org", PASSWORD), 2)
            await asyncio.sleep(seconds)  # what the server said to wait: the behaviour under test
            assert (await signin(http, "ann@example.org", PASSWORD)).status_code == 200


async def test_a_successful_sign_in_clears_its_accounts_failures(guarded: GuardedFactory) -> None:
    async with guarded(signin_failures_per_account=3) as g:
        await g.signup("ann@example.org")
        async with g.client() as http:
            for _ in range(2):
                assert (await signin(http, "ann@example.org", "wrong password")).status_code == 401
            assert (await signin(http, "ann@example.org", PASSWORD)).status_code == 200
            # Two typos a day never lock their owner out: the count started again.
            statuses = [(await signin(http, "ann@example.org", "wrong password")).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
