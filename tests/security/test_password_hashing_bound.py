"""CPU exhaustion through bcrypt: however many sign-ins one caller sends at once, no more hashes
run at the same time than ``password_hash_concurrency``, and a request that cannot get a turn in
time is told to come back (503 with Retry-After) instead of queueing without end."""

from __future__ import annotations

import asyncio

import pytest
from guarded_app import PASSWORD, GuardedFactory

from fedhive.api.auth import create_account

BURST = 8


def credentials(i: int) -> dict[str, str]:
    return {"email": f"u{i}@example.org", "password": PASSWORD}


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_burst_of_sign_ins_never_runs_more_hashes_than_allowed(
    guarded: GuardedFactory, concurrency: int
) -> None:
    # 8 rounds: each hash takes milliseconds, long enough for the burst's requests to overlap.
    async with guarded(bcrypt_rounds=8, password_hash_concurrency=concurrency, signin_failures_per_address=100) as g:
        emails = [f"user{i}@example.org" for i in range(BURST)]
        for email in emails:  # the operator's path, outside the guard: the burst is what is measured
            await asyncio.to_thread(create_account, g.services.db, email, PASSWORD, rounds=8)
        async with g.client() as http:
            answers = await asyncio.gather(
                *(http.post("/auth/signin", json={"email": e, "password": PASSWORD}) for e in emails),
                *(http.post("/auth/signin", json={"email": e, "password": "wrong password"}) for e in emails),
            )
    assert [r.status_code for r in answers] == [200] * BURST + [401] * BURST
    assert 1 <= g.guard.hashing_peak <= concurrency
    assert g.guard.hashing_now == 0


async def test_sign_ups_share_the_same_bound(guarded: GuardedFactory) -> None:
    async with guarded(bcrypt_rounds=8, password_hash_concurrency=1) as g, g.client() as http:
        answers = await asyncio.gather(*(http.post("/auth/signup", json=credentials(i)) for i in range(BURST)))
    assert [r.status_code for r in answers] == [201] * BURST
    assert g.guard.hashing_peak == 1


async def test_a_request_that_waits_too_long_for_its_turn_gets_503_with_retry_after(guarded: GuardedFactory) -> None:
    # 12 rounds: one hash takes ~0.25 s (longer on a loaded machine), far over the 0.05 s wait.
    settings = {"bcrypt_rounds": 12, "password_hash_concurrency": 1, "password_hash_wait_s": 0.05}
    async with guarded(**settings) as g, g.client() as http:
        answers = await asyncio.gather(*(http.post("/auth/signin", json=credentials(i)) for i in range(3)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses[0] == 401 and 503 in statuses, statuses  # the first got its turn: unknown e-mail
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "busy" in busy.json()["detail"]
