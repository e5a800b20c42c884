"""The secure aggregation protocol (SecAgg+): masks cancel exactly, a client deals with its
neighbours only, dropouts are recovered from the dropped client's neighbours while at least a
threshold of them remains, and below it the round fails with one line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.secagg import SecAggClient, SecAggError, SecAggServer
from fedhive.secagg.graph import ring_order
from fedhive.secagg.messages import MaskedInput, ShareKeys, UnmaskRequest, UnmaskShares
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


def _graph(secure: LocalSecureSum) -> dict[str, frozenset[str]]:
    return secure.server.roster().graph


def _first_short(graph: dict[str, frozenset[str]], t: int, answering: set[str]) -> tuple[str, int, int] | None:
    """The first client (by id) whose self mask has fewer than ``t`` answering holders (itself and
    its neighbours), with how many answered and how many hold its shares; None if none."""
    for u in sorted(graph):
        holders = graph[u] | {u}
        if len(holders & answering) < t:
            return u, len(holders & answering), len(holders)
    return None


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 14),
    length=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    k=st.one_of(st.none(), st.integers(1, 13)),
    fraction=st.sampled_from([0.3, 0.5, 1.0]),
)
def test_masks_cancel_exactly(n: int, length: int, seed: int, k: int | None, fraction: float) -> None:
    vectors = _vectors(n, length, seed)
    secure = LocalSecureSum(sorted(vectors), CTX, length, fraction, "test", neighbours=k)
    for c, v in vectors.items():
        secure.submit(c, v)
    assert np.array_equal(secure.finish(), _plain_sum(vectors, sorted(vectors)))


def test_each_client_shares_with_and_masks_towards_its_neighbours_only() -> None:
    ids = [f"c{i:02d}" for i in range(12)]
    clients = {c: SecAggClient(c, CTX) for c in ids}
    server = SecAggServer(CTX, 8, 0.5, neighbours=4)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    assert roster.neighbours == 4 and roster.threshold == 2
    for c, cl in clients.items():
        shares = cl.share_keys(roster)
        assert set(shares.sealed) == roster.graph[c] and len(shares.sealed) == 4
        server.add_shares(shares)
    routed = server.routed()
    assert all(set(routed[c]) == roster.graph[c] for c in ids)
    answers: list[UnmaskShares] = []
    for c, cl in clients.items():
        server.add_masked(cl.masked_input(routed[c], np.zeros(8, np.uint64)))
    request = server.unmask_request()
    for c, cl in clients.items():
        answer = cl.unmask(request)
        assert set(answer.self_mask) == roster.graph[c] | {c} and not answer.mask_key
        answers.append(answer)
        server.add_unmask(answer)
    assert np.array_equal(server.result(), np.zeros(8, np.uint64))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 14),
    seed=st.integers(0, 2**32 - 1),
    k=st.one_of(st.none(), st.integers(2, 8)),
    fraction=st.sampled_from([0.3, 0.5, 0.8]),
    data=st.data(),
)
def test_dropouts_after_the_masked_input_are_recovered_while_each_neighbourhood_can(
    n: int, seed: int, k: int | None, fraction: float, data: st.DataObject
) -> None:
    vectors = _vectors(n, 32, seed)
    secure = LocalSecureSum(sorted(vectors), CTX, 32, fraction, "round 3", neighbours=k)
    for c, v in vectors.items():
        secure.submit(c, v)
    gone = data.draw(st.sets(st.sampled_from(sorted(vectors)), max_size=n - 1))
    short = _first_short(_graph(secure), secure.threshold, set(vectors) - gone)
    if short is None:
        # Their inputs are in the sum: only their self masks had to be rebuilt from the others' shares.
        assert np.array_equal(secure.finish(gone), _plain_sum(vectors, sorted(vectors)))
    else:
        u, have, holders = short
        with pytest.raises(SecAggError) as info:
            secure.finish(gone)
        assert str(info.value) == (
            f"round 3: only {have} of {u}'s {holders} share holders sent unmasking shares, "
            f"fewer than the threshold {secure.threshold}: round aborted"
        )


def test_self_masks_are_rebuilt_from_neighbours_when_most_clients_are_gone() -> None:
    """20 clients with 4 neighbours each and threshold 2: 12 of them vanish after their masked
    input (the original protocol's threshold, half of all clients, could not be met), yet every
    self mask is rebuilt, because every neighbourhood keeps two of its holders."""
    vectors = _vectors(20, 64, 11)
    ids = sorted(vectors)
    secure = LocalSecureSum(ids, CTX, 64, 0.5, "test", neighbours=4)
    for c in ids:
        secure.submit(c, vectors[c])
    roster = secure.server.roster()
    ring = ring_order(ids, roster.graph_seed)
    gone = {c for p, c in enumerate(ring) if p % 5 not in (0, 2)}  # any 5 in a row keep two
    assert len(gone) == 12 and _first_short(roster.graph, secure.threshold, set(ids) - gone) is None
    assert np.array_equal(secure.finish(gone), _plain_sum(vectors, ids))


def test_dropouts_before_the_masked_input_are_unmasked_by_their_neighbours() -> None:
    vectors = _vectors(14, 128, 7)
    ids = sorted(vectors)
    secure = LocalSecureSum(ids, CTX, 128, 0.5, "test", neighbours=6)
    graph = _graph(secure)
    silent = ids[0]  # shared keys, then vanished: its pairwise masks with its neighbours must go
    sent = [c for c in ids if c != silent]
    for c in sent:
        secure.submit(c, vectors[c])
    request = secure.server.unmask_request()
    assert request.dropped == {silent}
    answers = {c: secure.clients[c].unmask(request) for c in sent}
    assert {c for c, a in answers.items() if a.mask_key} == graph[silent]  # only its neighbours hold its key
    for a in answers.values():
        secure.server.add_unmask(a)
    assert np.array_equal(secure.server.result(), _plain_sum(vectors, sent))


def test_a_threshold_too_high_to_recover_fails_in_one_line() -> None:
    vectors = _vectors(10, 16, 3)
    ids = sorted(vectors)
    secure = LocalSecureSum(ids, CTX, 16, 1.0, "round 4", neighbours=4)  # t = 4 of the 5 holders
    for c, v in vectors.items():
        secure.submit(c, v)
    graph = _graph(secure)
    u = ids[0]
    gone = set(sorted(graph[u])[:2])  # two of u's neighbours: three holders of its shares are left
    short = _first_short(graph, 4, set(ids) - gone)
    assert short is not None
    with pytest.raises(SecAggError) as info:
        secure.finish(gone)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"round 4: only {short[1]} of {short[0]}'s 5 share holders sent unmasking shares, "
        "fewer than the threshold 4: round aborted"
    )


def test_too_few_masked_inputs_fail_before_unmasking() -> None:
    vectors = _vectors(6, 8, 1)
    secure = LocalSecureSum(sorted(vectors), CTX, 8, 0.5, "round 2", neighbours=5)  # everyone: t = 3
    secure.submit("c00", vectors["c00"])
    secure.submit("c01", vectors["c01"])
    with pytest.raises(SecAggError, match="round 2: only 2 holders of c00's shares sent a masked input, fewer than"):
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
    with pytest.raises(SecAggError, match="fewer of our neighbours survived than the threshold"):
        clients["a"].unmask(UnmaskRequest(frozenset({"a"}), frozenset()))


def test_shares_from_or_to_non_neighbours_are_refused() -> None:
    clients = {f"c{i}": SecAggClient(f"c{i}", CTX) for i in range(8)}
    server = SecAggServer(CTX, 4, 0.5, neighbours=2)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    shares = {c: cl.share_keys(roster) for c, cl in clients.items()}
    stranger = next(c for c in clients if c != "c0" and c not in roster.graph["c0"])
    with pytest.raises(SecAggError, match="did not share with exactly its neighbours"):
        server.add_shares(ShareKeys("c0", {**shares["c0"].sealed, stranger: b"x"}))
    with pytest.raises(SecAggError, match="not our neighbours"):
        sealed = next(iter(shares[stranger].sealed.values()))
        clients["c0"].masked_input({stranger: sealed}, np.zeros(4, np.uint64))


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
