"""Keys kept for the session (``secagg.channel``): each pair agrees its ``c`` and ``s`` secrets
once (and each pair its share key), yet every round binds its shares to itself and masks with
seeds of its own."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.secagg import SecAggClient, SecAggError, SecAggServer
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.round import LocalSecureSum, round_context

IDS = [f"c{i:02d}" for i in range(10)]


def _round(channels: dict[str, ChannelKeys], rnd: int, vectors: dict[str, np.ndarray], gone: list[str]) -> np.ndarray:
    secure = LocalSecureSum(IDS, round_context("s", rnd, 0), 16, 0.5, f"round {rnd}", neighbours=4, channels=channels)
    for c in IDS:
        secure.submit(c, vectors[c])
    return secure.finish(gone)


def test_rounds_with_session_channels_sum_exactly_and_agree_each_pair_once() -> None:
    rng = np.random.default_rng(7)
    channels: dict[str, ChannelKeys] = {}
    for rnd in range(1, 6):  # a new graph each round: pairs change, each agreed the first time it meets
        vectors = {c: rng.integers(0, 2**64, 16, dtype=np.uint64, endpoint=False) for c in IDS}
        total = _round(channels, rnd, vectors, gone=IDS[rnd : rnd + 2])  # two gone after their masked input
        assert np.array_equal(total, sum(vectors.values(), np.zeros(16, np.uint64)))
    assert sorted(channels) == IDS
    publics = {ch.public for ch in channels.values()}
    assert len(publics) == len(IDS)
    # Each client agreed with each peer it ever met once, however many rounds they paired in.
    assert all(0 < ch.peers <= len(IDS) - 1 for ch in channels.values())


def _sealed_between(context: bytes, channels: dict[str, ChannelKeys]) -> tuple[SecAggClient, bytes, bytes]:
    clients = {c: SecAggClient(c, context, channels[c]) for c in ("a", "b")}
    server = SecAggServer(context, 4, 1.0)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for cl in clients.values():
        server.add_shares(cl.share_keys(roster))
    return clients["b"], server.routed()["b"]["a"], roster.keys["a"][1]


def test_a_share_sealed_in_one_round_does_not_open_in_another() -> None:
    channels = {"a": ChannelKeys(), "b": ChannelKeys()}
    _b1, sealed_round_1, s_key_1 = _sealed_between(round_context("s", 1, 0), channels)
    b2, sealed_round_2, s_key_2 = _sealed_between(round_context("s", 2, 0), channels)
    assert s_key_1 == s_key_2  # the mask key is the session's too ...
    assert channels["b"].peers == 1 and channels["b"].mask_peers == 1  # ... and each agreed once for both rounds
    # Replayed from round 1 into round 2, under the same keys: the round is in its associated data.
    with pytest.raises(SecAggError, match="does not authenticate"):
        b2.masked_input({"a": sealed_round_1}, np.zeros(4, np.uint64))
    assert sealed_round_1[:12] != sealed_round_2[:12]  # fresh nonces too


def test_a_peer_showing_our_own_channel_key_is_refused() -> None:
    ch = ChannelKeys()
    with pytest.raises(SecAggError, match="our own channel key"):
        ch.secret(ch.public)
    with pytest.raises(SecAggError, match="unusable public key"):
        ch.secret(b"\x00" * 32)  # a low-order point: no secret to agree
