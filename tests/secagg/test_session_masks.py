"""Mask secrets kept for the session (``secagg.channel``, ``secagg.client``): each pair agrees its
``s`` secret once, each round masks with seeds of its own (HKDF over the round's context), and
what the server may rebuild of a client that dropped out before masking is that round's seeds,
from its escrow, never a secret that opens another round."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.secagg import SecAggClient, SecAggError, SecAggServer, masks
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.messages import ShareKeys, UnmaskRequest
from fedhive.secagg.round import LocalSecureSum, round_context

IDS = [f"c{i:02d}" for i in range(6)]
LENGTH = 32


def _vectors(rnd: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rnd)
    return {c: rng.integers(0, 2**64, LENGTH, dtype=np.uint64, endpoint=False) for c in IDS}


def _sum(vectors: dict[str, np.ndarray], who: list[str]) -> np.ndarray:
    return sum((vectors[c] for c in who), np.zeros(LENGTH, np.uint64))


def test_a_round_after_every_pair_met_needs_no_key_agreement(monkeypatch: pytest.MonkeyPatch) -> None:
    agreements: list[int] = []
    exchange = masks.exchange

    def counted(own, peer):  # type: ignore[no-untyped-def]
        agreements.append(1)
        return exchange(own, peer)

    monkeypatch.setattr(masks, "exchange", counted)
    channels: dict[str, ChannelKeys] = {}
    per_round = []
    for rnd in (1, 2, 3):  # everyone pairs with everyone: every pair meets in round 1
        before = len(agreements)
        vectors = _vectors(rnd)
        secure = LocalSecureSum(
            IDS, round_context("s", rnd, 0), LENGTH, 0.5, f"round {rnd}", neighbours=5, channels=channels
        )
        for c in IDS[1:]:  # IDS[0] drops out before masking: the server rebuilds its round's seeds
            secure.submit(c, vectors[c])
        assert np.array_equal(secure.finish(), _sum(vectors, IDS[1:]))
        per_round.append(len(agreements) - before)
    pairs = len(IDS) * (len(IDS) - 1)
    assert per_round == [2 * pairs, 0, 0]  # c and s secrets, once per ordered pair, in round 1 only


def _shares(
    context: bytes, channels: dict[str, ChannelKeys]
) -> tuple[SecAggServer, dict[str, SecAggClient], dict[str, ShareKeys]]:
    clients = {c: SecAggClient(c, context, channels[c]) for c in IDS}
    server = SecAggServer(context, LENGTH, 0.5, neighbours=len(IDS) - 1)  # everyone pairs
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    return server, clients, {c: cl.share_keys(roster) for c, cl in clients.items()}


def test_round_seeds_differ_between_rounds_and_a_stale_escrow_is_refused() -> None:
    channels = {c: ChannelKeys() for c in IDS}
    ctx1, ctx2 = round_context("s", 1, 0), round_context("s", 1, 1)  # a retried attempt is a new round
    _s1, clients1, shares1 = _shares(ctx1, channels)
    server, clients2, shares2 = _shares(ctx2, channels)
    # Both ends of a pair derive the same seed; the next attempt's differs.
    a, b = IDS[0], IDS[1]
    assert clients1[a]._seeds[b] == clients1[b]._seeds[a] != clients2[a]._seeds[b]
    # The server keeps attempt 0's escrow of IDS[0] in place of attempt 1's, then IDS[0] drops
    # out: the escrow key the neighbours rebuild is attempt 1's, and it opens nothing else.
    for c in IDS:
        escrow = shares1[c].escrow if c == IDS[0] else shares2[c].escrow
        server.add_shares(ShareKeys(c, shares2[c].sealed, escrow))
    routed = server.routed()
    vectors = _vectors(1)
    for c in IDS[1:]:
        server.add_masked(clients2[c].masked_input(routed[c], vectors[c]))
    request = server.unmask_request()
    for c in IDS[1:]:
        server.add_unmask(clients2[c].unmask(request))
    with pytest.raises(SecAggError, match="c00's escrowed seeds do not authenticate"):
        server.result()


def test_an_escrow_opens_only_under_its_key_round_and_client() -> None:
    ctx = round_context("s", 3, 0)
    key = bytes(range(32))
    seeds = [bytes([i]) * 32 for i in range(4)]
    sealed = masks.seal_escrow(key, ctx, "c01", seeds)
    assert masks.open_escrow(key, ctx, "c01", sealed, 4) == seeds
    others = (round_context("s", 4, 0), round_context("s", 3, 1), round_context("t", 3, 0))  # round, attempt, session
    for args in ((bytes(32), ctx, "c01"), *((key, other, "c01") for other in others), (key, ctx, "c02")):
        with pytest.raises(SecAggError, match="do not authenticate"):
            masks.open_escrow(*args, sealed, 4)
    with pytest.raises(SecAggError, match="145 bytes, not 144"):
        masks.open_escrow(key, ctx, "c01", sealed + b"x", 4)


def test_never_both_secrets_of_a_client_under_session_mask_keys() -> None:
    channels = {c: ChannelKeys() for c in IDS}
    server, clients, shares = _shares(round_context("s", 1, 0), channels)
    for s in shares.values():
        server.add_shares(s)
    routed = server.routed()
    c = IDS[1]
    clients[c].masked_input(routed[c], np.zeros(LENGTH, np.uint64))
    both = UnmaskRequest(frozenset(IDS), frozenset({IDS[0]}))  # IDS[0] both in the sum and dropped
    with pytest.raises(SecAggError, match="asked for both secrets"):
        clients[c].unmask(both)
