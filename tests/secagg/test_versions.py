"""What the masks are made of, and nodes that disagree on it: a client's masks and the server's
removal of them must be the same construction, or the sum is garbage that nothing would notice.
So the roster and every client's shares carry the version, and the other side refuses another
in one line (a node of an older fedhive sends none: version 1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhive.core.envelope import Kind, make
from fedhive.errors import ProtocolError
from fedhive.secagg import SecAggClient, SecAggServer, masks, wire
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.round import round_context

CTX = round_context("s", 1, 0)


def _roster_and_shares() -> tuple[dict[str, object], dict[str, object]]:
    clients = [SecAggClient(c, CTX) for c in ("a", "b", "c")]
    server = SecAggServer(CTX, 4, 0.5)
    for cl in clients:
        server.add_keys(cl.advertise())
    roster = server.roster()
    return wire.roster_body(0, roster), wire.shares_body(0, clients[0].share_keys(roster))


def test_this_version_reads_its_own_roster_and_shares() -> None:
    roster, shares = _roster_and_shares()
    assert roster["version"] == shares["version"] == wire.VERSION == 2
    assert wire.read_roster(make(Kind.TRAIN, "coordinator", body=roster)).neighbours == 2
    assert set(wire.read_shares(make(Kind.UPDATE, "a", body=shares)).sealed) == {"b", "c"}


def test_a_roster_from_an_older_node_is_refused_in_one_line() -> None:
    roster, _ = _roster_and_shares()
    del roster["version"]  # what a node before version 2 sends
    with pytest.raises(ProtocolError, match=r"the node's fedhive makes masks of version 1, this one of version 2"):
        wire.read_roster(make(Kind.TRAIN, "coordinator", body=roster))


def test_shares_from_a_client_of_another_version_are_refused_in_one_line() -> None:
    _, shares = _roster_and_shares()
    for version in (1, 3):
        with pytest.raises(ProtocolError, match=f"a's fedhive makes masks of version {version}.*same fedhive"):
            wire.read_shares(make(Kind.UPDATE, "a", body={**shares, "version": version}))


def test_a_pair_derives_one_share_key_for_the_session_the_same_on_both_sides() -> None:
    a, b = ChannelKeys(), ChannelKeys()
    key = a.share_key(b.public, "a", "b")
    assert key == b.share_key(a.public, "b", "a")
    assert a.share_key(b.public, "a", "b") is key  # derived once, kept
    assert ChannelKeys().share_key(b.public, "x", "b") != key  # another pair, another key


def test_masks_are_aes_128_ctr_keystream_of_the_seeds_first_half() -> None:
    seed = os.urandom(masks.SEED_BYTES)
    masker = masks.Masker(1000)
    expected = Cipher(algorithms.AES(seed[:16]), modes.CTR(bytes(16))).encryptor().update(bytes(8000))
    assert masker.stream(seed).tobytes() == expected
    vector = np.arange(1000, dtype=np.uint64)
    masker.add(vector, seed)
    masker.subtract(vector, seed)
    assert np.array_equal(vector, np.arange(1000, dtype=np.uint64))
