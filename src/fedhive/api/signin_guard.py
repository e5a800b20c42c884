"""What stands between a password guesser and bcrypt: failure throttles and a bound on hashing.

Throttles (the ``limits`` library's moving window, in this process's memory): failed sign-ins
are counted per account (the normalised e-mail, known or not, so a 429 tells nothing about which
e-mails have accounts) and per client address. Past ``signin_failures_per_account`` or
``signin_failures_per_address`` failures within ``signin_window_s``, sign-ins for that account or
from that address get 429 with ``Retry-After`` (seconds until the oldest failure leaves the
window), whatever the password: the right one included, or guessing would merely slow down. A
successful sign-in clears its account's failures. The address is the connection's peer address:
behind a reverse proxy, run the server with the proxy's forwarded headers trusted, or every
caller shares the proxy's address.

Hashing: bcrypt is deliberately slow (~0.25 s at 12 rounds) and runs in worker threads, so
without a bound one caller sending many sign-ins at once keeps every core busy. At most
``password_hash_concurrency`` hashes run at once, sign-ups and sign-ins together; a request that
waits longer than ``password_hash_wait_s`` for its turn gets 503 with ``Retry-After``. The
throttles are checked again once a request has its turn, so requests that queued together cannot
all slip past a limit that the first of them reached.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from fedhive.service.settings import Settings


class SigninGuard:
    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        window = settings.signin_window_s
        self._per_account = RateLimitItemPerSecond(settings.signin_failures_per_account, window)
        self._per_address = RateLimitItemPerSecond(settings.signin_failures_per_address, window)
        self._slots = asyncio.Semaphore(settings.password_hash_concurrency)
        self._wait_s = settings.password_hash_wait_s
        self.hashing_now = 0  # hashes running now, and the most ever at once: for operators and tests
        self.hashing_peak = 0

    def check(self, account: str, address: str) -> None:
        """429 with Retry-After if the account or the address used up its failures."""
        waits = [
            self._retry_after(item, kind, key)
            for item, kind, key in ((self._per_account, "account", account), (self._per_address, "address", address))
            if not self._limiter.test(item, kind, key)
        ]
        if waits:
            retry = max(waits)
            raise HTTPException(
                429, f"too many failed sign-ins; try again in {retry} s", headers={"Retry-After": str(retry)}
            )

    def failed(self, account: str, address: str) -> None:
        self._limiter.hit(self._per_account, "account", account)
        self._limiter.hit(self._per_address, "address", address)

    def succeeded(self, account: str) -> None:
        self._limiter.clear(self._per_account, "account", account)

    def _retry_after(self, item: RateLimitItemPerSecond, kind: str, key: str) -> int:
        reset_at = self._limiter.get_window_stats(item, kind, key).reset_time
        return max(1, math.ceil(reset_at - time.time()))

    @asynccontextmanager
    async def hashing(self) -> AsyncIterator[None]:
        """A turn to hash: at most ``password_hash_concurrency`` at once; 503 after waiting too long."""
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            retry = max(1, math.ceil(self._wait_s))
            raise HTTPException(
                503, "the server is busy checking passwords; try again shortly", headers={"Retry-After": str(retry)}
            ) from None
        self.hashing_now += 1
        self.hashing_peak = max(self.hashing_peak, self.hashing_now)
        try:
            yield
        finally:
            self.hashing_now -= 1
            self._slots.release()
