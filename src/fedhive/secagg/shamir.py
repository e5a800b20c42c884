"""Shamir secret sharing over the prime field of the Mersenne prime 2**521 - 1.

``cryptography`` has no secret sharing, so this is the textbook scheme (Shamir 1979), kept small:
a random polynomial of degree ``threshold - 1`` whose constant term is the secret, evaluated at
``x = 1..n``; any ``threshold`` points give the secret back by Lagrange interpolation at 0, and
fewer reveal nothing about it (every secret is equally likely). Coefficients come from
``secrets`` (the OS's CSPRNG). Secrets are at most 64 bytes, below the prime.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # a field element, big-endian
MAX_SECRET_BYTES = 64

Share = tuple[int, int]  # (x, y)


def split(secret: bytes, n: int, threshold: int) -> list[Share]:
    """``n`` shares of ``secret``, any ``threshold`` of which recover it."""
    if not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold must be between 1 and n={n}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The coefficients that interpolate the points at ``xs`` at 0: compute them once for a set
    of share holders and reuse them for every secret those holders share."""
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def combine(ys: Sequence[int], coefficients: Sequence[int], length: int) -> bytes:
    """The secret of ``length`` bytes from share values ``ys`` taken at the points the
    ``coefficients`` were made for (``lagrange_at_zero``)."""
    secret = sum(y * c for y, c in zip(ys, coefficients, strict=True)) % PRIME
    if secret >= 1 << (8 * length):
        raise ValueError("the shares do not interpolate to a secret of that length: a share is wrong")
    return secret.to_bytes(length, "big")


def to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def from_bytes(raw: bytes) -> int:
    y = int.from_bytes(raw, "big")
    if len(raw) != SHARE_BYTES or y >= PRIME:
        raise ValueError("a share is not a field element")
    return y
