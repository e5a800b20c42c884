"""Shamir secret sharing over the prime field of the Mersenne prime 2**521 - 1.

``cryptography`` has no secret sharing, so this is the textbook scheme (Shamir 1979), kept small:
a random polynomial of degree ``threshold - 1`` whose constant term is the secret, evaluated at
each holder's point ``x`` (a client's place in the roster, from 1); any ``threshold`` points give
the secret back by Lagrange interpolation at 0, and fewer reveal nothing about it (every secret is
equally likely). Coefficients come from ``secrets`` (the OS's CSPRNG), uniform on the field. Secrets are at most 64
bytes, below the prime.

With SecAgg+ a client's secrets go to its ``k`` neighbours and itself only, so a split costs
``(k + 1) * threshold`` small multiplications, not ``n * threshold``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # a field element, big-endian
MAX_SECRET_BYTES = 64

Share = tuple[int, int]  # (x, y)


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[int]:
    """The shares of ``secret`` at the points ``xs`` (distinct, 1 <= x < 2**32), any ``threshold``
    of which recover it."""
    if not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be between 1 and the {len(xs)} holders, got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < 2**32 for x in xs):
        raise ValueError("share points must be distinct and in [1, 2**32)")
    coefficients = [int.from_bytes(secret, "big"), *random_elements(threshold - 1)]
    coefficients.reverse()
    shares = []
    for x in xs:
        y = 0
        for c in coefficients:  # Horner; x is small, so reducing once at the end is cheaper
            y = y * x + c
        shares.append(y % PRIME)
    return shares


def random_elements(count: int) -> list[int]:
    """``count`` uniform elements of the field from one read of the OS's CSPRNG (``secrets``
    draws each with a read of its own: a third of a split's time went to those reads): each takes
    521 random bits, which are uniform on [0, PRIME]; the one value PRIME is drawn again."""
    raw = secrets.token_bytes(SHARE_BYTES * count)
    out = []
    for i in range(count):
        y = int.from_bytes(raw[i * SHARE_BYTES : (i + 1) * SHARE_BYTES], "big") & PRIME
        while y == PRIME:  # probability 2**-521
            y = int.from_bytes(secrets.token_bytes(SHARE_BYTES), "big") & PRIME
        out.append(y)
    return out


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The coefficients that interpolate the points at ``xs`` at 0: compute them once for a set
    of share holders and reuse them for every secret those holders share."""
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    nums, dens = [], []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num *= xm
                den *= xm - xj
        nums.append(num % PRIME)
        dens.append(den % PRIME)
    return [n * inv % PRIME for n, inv in zip(nums, _inverses(dens), strict=True)]


def _inverses(values: list[int]) -> list[int]:
    """Every value's inverse modulo PRIME with one modular inversion (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
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
