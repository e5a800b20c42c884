"""The secure aggregation protocol: masks cancel exactly, dropouts are recovered while at least a
threshold of clients remains, and below it the round fails with one line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.secagg import SecAggClient, SecAggError, SecAggServer
from fedhive.secagg.messages import MaskedInput, UnmaskRequest
from fedhive.secagg.round import LocalSecureSum, round_context

CTX = round_context("s1", 1, 0)


def _vectors(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"c{i:02d}": rng.integers(0, 2**64, length, dtype=np.uint64, endpoint=False) for i in range(n)}


def _plain_sum(vectors: dict[str, np.ndarray], who: list[str]) -> np.ndarray:
    total = np.zeros(next(iter(vectors.values())).size, np.uint64)
    for c in who:
        total += vectors[c]
    return total


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), length=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_masks_cancel_exactly(n: int, length: int, seed: int) -> None:
    vectors = _vectors(n, length, seed)
    secure = LocalSecureSum(sorted(vectors), CTX, length, 0.5, "test")
    for c, v in vectors.items():
        secure.submit(c, v)
    assert np.array_equal(secure.finish(), _plain_sum(vectors, sorted(vectors)))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 10), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_dropouts_after_the_masked_input_are_recovered(n: int, seed: int, data: st.DataObject) -> None:
    vectors = _vectors(n, 64, seed)
    secure = LocalSecureSum(sorted(vectors), CTX, 64, 0.5, "test")
    for c, v in vectors.items():
        secure.submit(c, v)
    gone = data.draw(st.sets(st.sampled_from(sorted(vectors)), max_size=n - secure.threshold))
    # Their inputs are in the sum: only their self masks had to be rebuilt from the others' shares.
    assert np.array_equal(secure.finish(gone), _plain_sum(vectors, sorted(vectors)))


def test_dropouts_before_the_masked_input_are_unmasked_by_survivors() -> None:
    vectors = _vectors(10, 128, 7)
    secure = LocalSecureSum(sorted(vectors), CTX, 128, 0.5, "test")
    sent = sorted(vectors)[3:]  # three shared keys, then vanished: their pairwise masks must go
    for c in sent:
        secure.submit(c, vectors[c])
    assert np.array_equal(secure.finish(gone=sent[:2]), _plain_sum(vectors, sent))


def test_fewer_survivors_than_the_threshold_fail_in_one_line() -> None:
    vectors = _vectors(10, 16, 3)
    secure = LocalSecureSum(sorted(vectors), CTX, 16, 0.5, "round 4")
    for c, v in vectors.items():
        secure.submit(c, v)
    with pytest.raises(SecAggError) as info:
        secure.finish(gone=sorted(vectors)[:6])  # 4 left, threshold 5
    message = str(info.value)
    assert "\n" not in message
    assert message == "round 4: only 4 clients sent unmasking shares, fewer than the threshold 5: round aborted"


def test_too_few_masked_inputs_fail_before_unmasking() -> None:
    vectors = _vectors(6, 8, 1)
    secure = LocalSecureSum(sorted(vectors), CTX, 8, 0.5, "round 2")
    secure.submit("c00", vectors["c00"])
    secure.submit("c01", vectors["c01"])
    with pytest.raises(SecAggError, match="only 2 clients sent a masked input, fewer than the threshold 3"):
        secure.finish()


def test_one_client_alone_is_refused() -> None:
    with pytest.raises(SecAggError, match="needs at least 2"):
        LocalSecureSum(["c00"], CTX, 4, 0.5, "round 1")


def _three_after_masking() -> tuple[dict[str, SecAggClient], SecAggServer]:
    clients = {c: SecAggClient(c, CTX) for c in ("a", "b", "c")}
    server = SecAggServer(CTX, 4, 0.6)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for cl in clients.values():
        server.add_shares(cl.share_keys(roster))
    routed = server.routed()
    for c, cl in clients.items():
        server.add_masked(cl.masked_input(routed[c], np.zeros(4, np.uint64)))
    return clients, server


def test_a_client_never_reveals_both_secrets_of_one_client() -> None:
    clients, _server = _three_after_masking()
    # A curious server asking for b's self-mask share and its mask key would unmask b's input.
    with pytest.raises(SecAggError, match="both secrets"):
        clients["a"].unmask(UnmaskRequest(frozenset({"a", "b", "c"}), frozenset({"b"})))


def test_a_client_refuses_to_unmask_below_the_threshold() -> None:
    clients, _server = _three_after_masking()
    with pytest.raises(SecAggError, match="fewer survivors than the threshold"):
        clients["a"].unmask(UnmaskRequest(frozenset({"a"}), frozenset()))


def test_a_tampered_share_does_not_authenticate() -> None:
    clients = {c: SecAggClient(c, CTX) for c in ("a", "b")}
    server = SecAggServer(CTX, 4, 1.0)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for cl in clients.values():
        server.add_shares(cl.share_keys(roster))
    routed = server.routed()
    sealed = bytearray(routed["b"]["a"])
    sealed[-1] ^= 1
    with pytest.raises(SecAggError, match="does not authenticate"):
        clients["b"].masked_input({"a": bytes(sealed)}, np.zeros(4, np.uint64))


def test_steps_out_of_order_are_refused() -> None:
    client = SecAggClient("a", CTX)
    with pytest.raises(SecAggError, match="asked to send a masked input while waiting to advertise"):
        client.masked_input({}, np.zeros(1, np.uint64))
    server = SecAggServer(CTX, 4, 0.5)
    with pytest.raises(SecAggError, match="out of place"):
        server.add_masked(MaskedInput("a", np.zeros(4, np.uint64)))
