from __future__ import annotations

import pytest

from fedhive.api.security import AuthError, hash_password, issue_token, read_token, verify_password

SECRET = "s" * 32


def test_passwords_are_salted_hashes_that_verify() -> None:
    h1, h2 = hash_password("correct horse", rounds=4), hash_password("correct horse", rounds=4)
    assert h1 != h2 and "correct horse" not in h1
    assert verify_password("correct horse", h1)
    assert not verify_password("wrong horse!", h1)
    assert not verify_password("correct horse", "not-a-hash")


@pytest.mark.parametrize("bad", ["short", "x" * 73])
def test_password_rules(bad: str) -> None:
    with pytest.raises(AuthError):
        hash_password(bad, rounds=4)


def test_tokens_round_trip_and_expire() -> None:
    token = issue_token("u1", "admin", secret=SECRET, ttl_s=60, now=1_000_000)
    with pytest.raises(AuthError, match="expired"):
        read_token(token, secret=SECRET)
    fresh = issue_token("u1", "admin", secret=SECRET, ttl_s=60)
    claims = read_token(fresh, secret=SECRET)
    assert claims.user_id == "u1" and claims.role == "admin"


def test_forged_and_malformed_tokens() -> None:
    forged = issue_token("u1", "admin", secret="o" * 32)
    with pytest.raises(AuthError, match="invalid token"):
        read_token(forged, secret=SECRET)
    with pytest.raises(AuthError, match="invalid token"):
        read_token("not.a.jwt", secret=SECRET)
