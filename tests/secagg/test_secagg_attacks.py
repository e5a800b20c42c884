"""Attacks on the session mask secrets and the escrow (``secagg.channel``, ``secagg.client``).

A round's pair seeds follow from the session's ``s`` secrets and the round's context alone, so
whatever the server may do with one run of a context it must not get a second: the replay test
plays a server that runs one context twice, takes the target's self mask from the first run and
its escrow from the second, and would hold the target's update if the clients went along. The
others check what the design already defeats: a server that calls a masked client dropped
opens its round's seeds but not its update; a garbage escrow fails the round naming its client
and the holders whose shares rebuilt the key; each round's escrow key is fresh (its AES-GCM nonce
is fixed).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.secagg import SecAggClient, SecAggError, SecAggServer, masks, shamir
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.messages import Roster, ShareKeys, UnmaskRequest, UnmaskShares
from fedhive.secagg.round import LocalSecureSum, round_context

IDS = [f"c{i:02d}" for i in range(6)]
TARGET = IDS[0]
LENGTH = 16
CONTEXT = round_context("s", 2, 0)


class _CuriousRun:
    """One run of ``CONTEXT`` by a server that keeps what it sees and asks for what it likes."""

    def __init__(self, channels: dict[str, ChannelKeys]) -> None:
        self.clients = {c: SecAggClient(c, CONTEXT, channels[c]) for c in IDS}
        self.server = SecAggServer(CONTEXT, LENGTH, 0.5, neighbours=len(IDS) - 1)  # everyone pairs
        for cl in self.clients.values():
            self.server.add_keys(cl.advertise())
        self.roster: Roster = self.server.roster()
        self.shares = {c: cl.share_keys(self.roster) for c, cl in self.clients.items()}
        for s in self.shares.values():
            self.server.add_shares(s)
        self.routed = self.server.routed()

    def mask(self, who: list[str], vector: np.ndarray) -> dict[str, np.ndarray]:
        return {c: self.clients[c].masked_input(self.routed[c], vector).vector for c in who}

    def rebuild(self, request: UnmaskRequest, which: int, length: int) -> bytes:
        """The target's self-mask seed (``which`` 0) or escrow key (1) from its holders' answers."""
        answers = [self.clients[c].unmask(request) for c in IDS[1:]]
        held = [(a.client, (a.self_mask if which == 0 else a.mask_key)[TARGET]) for a in answers]
        held = held[: self.roster.threshold]
        xs = [self.roster.point(c) for c, _ in held]
        return shamir.combine([y for _, y in held], shamir.lagrange_at_zero(xs), length)


def _unmask_by_replay(update: np.ndarray) -> np.ndarray:
    """The server's attack: run one context twice; the target's update if the clients allow it."""
    channels = {c: ChannelKeys() for c in IDS}
    # Run 1: the target sends its masked input and is in the sum: its self-mask seed is rebuilt.
    first = _CuriousRun(channels)
    masked = first.mask(IDS, update)[TARGET]
    self_seed = first.rebuild(UnmaskRequest(frozenset(IDS), frozenset()), 0, masks.SEED_BYTES)
    # Run 2, same context: the target shares (escrowing its pair seeds) but is told to have dropped.
    second = _CuriousRun(channels)
    second.mask(IDS[1:], np.zeros(LENGTH, np.uint64))
    key = second.rebuild(UnmaskRequest(frozenset(IDS[1:]), frozenset({TARGET})), 1, masks.KEY_BYTES)
    neighbours = sorted(second.roster.graph[TARGET])
    escrow = second.shares[TARGET].escrow
    seeds = dict(zip(neighbours, masks.open_escrow(key, CONTEXT, TARGET, escrow, len(neighbours)), strict=True))
    masker = masks.Masker(LENGTH)
    recovered = masked.copy()
    masker.subtract(recovered, self_seed)
    for v, seed in seeds.items():  # TARGET has the lowest id: it added each pair's mask
        masker.subtract(recovered, seed)
    return recovered


def test_a_client_takes_part_in_one_round_context_once() -> None:
    update = np.arange(LENGTH, dtype=np.uint64) * np.uint64(1_000_003)
    with pytest.raises(SecAggError, match=r"asked a second time to mask under .*refused"):
        recovered = _unmask_by_replay(update)
        assert not np.array_equal(recovered, update), "the server unmasked one client's update"


def test_a_server_that_calls_a_masked_client_dropped_opens_its_seeds_but_not_its_update() -> None:
    # The lie told to every holder alike: the server keeps the target's masked input, says it
    # dropped, and opens its escrow. What is left is the update under its self mask, which no
    # holder will now give (one unmasking answer per round, and never both secrets).
    update = np.arange(LENGTH, dtype=np.uint64) * np.uint64(1_000_003)
    run = _CuriousRun({c: ChannelKeys() for c in IDS})
    masked = run.mask(IDS, update)[TARGET]
    key = run.rebuild(UnmaskRequest(frozenset(IDS[1:]), frozenset({TARGET})), 1, masks.KEY_BYTES)
    neighbours = sorted(run.roster.graph[TARGET])
    seeds = masks.open_escrow(key, CONTEXT, TARGET, run.shares[TARGET].escrow, len(neighbours))
    left = masked.copy()
    masker = masks.Masker(LENGTH)
    for seed in seeds:
        masker.subtract(left, seed)
    assert not np.array_equal(left, update)
    with pytest.raises(SecAggError, match="asked to unmask while waiting to done"):
        run.clients[IDS[1]].unmask(UnmaskRequest(frozenset(IDS), frozenset()))


def test_a_roster_for_a_spent_context_is_refused_even_by_a_fresh_round_object() -> None:
    channel, other = ChannelKeys(), ChannelKeys()
    first = SecAggClient("a", CONTEXT, channel)
    server = SecAggServer(CONTEXT, LENGTH, 1.0)
    server.add_keys(first.advertise())
    server.add_keys(SecAggClient("b", CONTEXT, other).advertise())
    roster = server.roster()
    first.share_keys(roster)
    again = SecAggClient("a", CONTEXT, channel)
    again.advertise()
    with pytest.raises(SecAggError, match="asked a second time"):
        again.share_keys(roster)
    # The next attempt is a new context: taken part in as usual.
    retry = SecAggClient("a", round_context("s", 2, 1), channel)
    retry.advertise()
    with pytest.raises(SecAggError, match="does not hold the keys"):  # reached the roster's checks
        retry.share_keys(Roster({"a": (b"x" * 32, b"y" * 32), "b": roster.keys["b"]}, 2, 1, bytes(32)))


def test_a_dropped_client_whose_escrow_is_garbage_fails_the_round_naming_it() -> None:
    channels = {c: ChannelKeys() for c in IDS}
    clients = {c: SecAggClient(c, CONTEXT, channels[c]) for c in IDS}
    server = SecAggServer(CONTEXT, LENGTH, 0.5, neighbours=len(IDS) - 1)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for c, cl in clients.items():
        shares = cl.share_keys(roster)
        if c == TARGET:  # a malicious client: right length, wrong bytes
            shares = ShareKeys(c, shares.sealed, bytes(len(shares.escrow)))
        server.add_shares(shares)
    routed = server.routed()
    for c in IDS[1:]:  # and then it drops out before masking
        server.add_masked(clients[c].masked_input(routed[c], np.zeros(LENGTH, np.uint64)))
    request = server.unmask_request()
    assert request.dropped == {TARGET}
    for c in IDS[1:]:
        server.add_unmask(clients[c].unmask(request))
    with pytest.raises(SecAggError, match=f": {TARGET}'s escrowed seeds do not authenticate under its rebuilt key"):
        server.result()


def test_a_holder_sending_a_wrong_escrow_key_share_is_named_beside_the_client() -> None:
    # An honest client dropped; a malicious neighbour answers with a wrong share of its escrow
    # key. The escrow then fails exactly as a garbage one would: the line must not blame the
    # dropped client alone (a node that left out whoever it names would let one client exclude
    # any neighbour).
    channels = {c: ChannelKeys() for c in IDS}
    clients = {c: SecAggClient(c, CONTEXT, channels[c]) for c in IDS}
    server = SecAggServer(CONTEXT, LENGTH, 0.5, neighbours=len(IDS) - 1, label="round 2")
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for cl in clients.values():
        server.add_shares(cl.share_keys(roster))
    routed = server.routed()
    for c in IDS[1:]:
        server.add_masked(clients[c].masked_input(routed[c], np.zeros(LENGTH, np.uint64)))
    request = server.unmask_request()
    liar = IDS[1]  # the lowest point after TARGET's: among the first threshold answers
    for c in IDS[1:]:
        answer = clients[c].unmask(request)
        if c == liar:
            answer = UnmaskShares(c, answer.self_mask, {TARGET: answer.mask_key[TARGET] ^ 1})
        server.add_unmask(answer)
    with pytest.raises(SecAggError, match=rf"^round 2: {TARGET}'s escrowed seeds .*shares of {liar}, .*wrong share\)$"):
        server.result()


def test_each_round_escrows_under_a_key_of_its_own() -> None:
    # The escrow's AES-GCM nonce is fixed: safe only while no key seals twice, whatever the
    # session's secrets: every client, every round, every attempt draws a new one.
    channels: dict[str, ChannelKeys] = {}
    keys: list[bytes] = []
    for rnd, attempt in ((1, 0), (1, 1), (2, 0), (3, 0)):
        secure = LocalSecureSum(IDS, round_context("s", rnd, attempt), LENGTH, 0.5, "r", channels=channels)
        keys += [cl._escrow_key for cl in secure.clients.values()]
    assert len(set(keys)) == len(keys) == 4 * len(IDS)
