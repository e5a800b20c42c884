"""Shamir sharing: any threshold of shares gives the secret back; fewer do not."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.secagg import shamir


def _split(secret: bytes, n: int, threshold: int) -> list[shamir.Share]:
    xs = list(range(1, n + 1))
    return list(zip(xs, shamir.split(secret, xs, threshold), strict=True))


def _recover(shares: list[shamir.Share], length: int) -> bytes:
    coefficients = shamir.lagrange_at_zero([x for x, _ in shares])
    return shamir.combine([y for _, y in shares], coefficients, length)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_any_threshold_subset_recovers_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = _split(secret, n, t)
    subset = data.draw(st.permutations(shares))[:t]
    assert _recover(subset, len(secret)) == secret


def test_fewer_than_threshold_shares_give_another_value() -> None:
    secret = bytes(range(32))
    shares = _split(secret, 5, 3)
    for pair in itertools.combinations(shares, 2):
        # Two points of a degree-2 polynomial interpolate a line: its value at 0 is unrelated.
        with pytest.raises(ValueError, match="a share is wrong"):
            _recover(list(pair), len(secret))


def test_shares_are_field_elements_on_the_wire() -> None:
    y, *_ = shamir.split(b"\x01" * 32, [1, 2, 3], 2)
    assert shamir.from_bytes(shamir.to_bytes(y)) == y
    with pytest.raises(ValueError, match="field element"):
        shamir.from_bytes(b"\xff" * shamir.SHARE_BYTES)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"x", [1, 2, 3], 4)
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        shamir.split(b"x" * 65, [1, 2, 3], 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"x", [1, 1, 2], 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.lagrange_at_zero([1, 1])
