"""One client's side of secure aggregation: SecAgg+ (Bell et al. 2020) over the steps of Bonawitz
et al. 2017, the honest-but-curious version.

A client takes the four steps in order, each answering what the server sent: ``advertise`` ->
``share_keys(roster)`` -> ``masked_input(routed, vector)`` -> ``unmask(request)``. It deals only
with its neighbours in the roster's graph: it shares its secrets among them (and keeps one share),
and masks its input towards those of them whose shares reached it. A step out of order, or a
request that would make it reveal both secrets of one client (its self mask and its escrow key:
together they unmask that client's input), is refused with ``SecAggError``.

The pairwise masks come from secrets agreed once a session (``secagg.channel``): each round's seed
is HKDF of that secret with the round's context and the pair. What a client Shamir-shares is its
self-mask seed and a fresh escrow key that seals its round's pair seeds (sent to the server with
its shares): rebuilding it gives the server that round's seeds of a client that dropped out, as
rebuilding its round's ``s`` key did in Bonawitz et al., and nothing about any other round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from fedhive.secagg import masks, shamir
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.graph import degree
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, Roster, ShareKeys, UnmaskRequest, UnmaskShares


class SecAggClient:
    def __init__(self, client_id: str, context: bytes, channel: ChannelKeys | None = None) -> None:
        """One round (``context``) of ``client_id``. ``channel``: its ``c`` and ``s`` key pairs
        kept for the session (``secagg.channel``); None makes them for this round alone. The
        self-mask seed, the escrow key and the round's pair seeds are always this round's own."""
        self.client_id = client_id
        self._context = context
        self._step = "advertise"
        self._channel = channel if channel is not None else ChannelKeys()
        self._self_seed = os.urandom(masks.SEED_BYTES)
        self._escrow_key = os.urandom(masks.KEY_BYTES)  # seals this round's pair seeds, once
        self._roster: Roster | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._share_keys: dict[str, bytes] = {}  # neighbour -> the AES-GCM key we both derive for shares
        self._seeds: dict[str, bytes] = {}  # neighbour -> this round's pair seed, from the session's s secret
        self._held: dict[str, tuple[int, int]] = {}  # client -> (self-mask share, escrow-key share) we hold
        self._peers: frozenset[str] = frozenset()  # neighbours whose shares we hold: our masks pair with them

    def _advance(self, expected: str, following: str) -> None:
        if self._step != expected:
            raise SecAggError(f"{self.client_id}: asked to {expected} while waiting to {self._step}")
        self._step = following

    def advertise(self) -> AdvertiseKeys:
        self._advance("advertise", "share keys")
        return AdvertiseKeys(self.client_id, self._channel.public, self._channel.mask_public)

    def share_keys(self, roster: Roster) -> ShareKeys:
        # First of all: one run per context. A second would derive the same pair seeds beside a
        # new self mask (``ChannelKeys.claim_round``), so a roster for a spent context is refused.
        if self._step == "share keys":  # a step out of order is ``_advance``'s to refuse
            self._channel.claim_round(self._context)
        self._advance("share keys", "send a masked input")
        if self.client_id not in roster.keys:
            raise SecAggError(f"{self.client_id}: the roster leaves us out")
        n, k, t = len(roster.ids), roster.neighbours, roster.threshold
        if k != degree(n, k):
            raise SecAggError(f"{k} neighbours cannot make a regular graph of {n} clients")
        if not 2 <= t <= k + 1:
            raise SecAggError(f"threshold {t} is not between 2 and the {k + 1} holders of each client's shares")
        publics = [p for pair in roster.keys.values() for p in pair]
        if len(set(publics)) != len(publics):
            raise SecAggError("the roster repeats a public key")
        if roster.keys[self.client_id] != (self._channel.public, self._channel.mask_public):
            raise SecAggError(f"{self.client_id}: the roster does not hold the keys we advertised")
        self._roster = roster
        self._neighbours = roster.neighbours_of(self.client_id)
        if missing := sorted(self._neighbours - roster.keys.keys()):
            raise SecAggError(f"{self.client_id}: the roster lacks the keys of our neighbours {missing[:5]}")
        holders = sorted(self._neighbours | {self.client_id}, key=roster.point)
        xs = [roster.point(h) for h in holders]
        self_shares = shamir.split(self._self_seed, xs, t)
        key_shares = shamir.split(self._escrow_key, xs, t)
        # This round's seed with each neighbour: HKDF of the secret our s keys agreed once this
        # session, bound to the round's context and the pair. Sealed under the escrow key, so that
        # the server can rebuild this round's seeds (only) if we drop out before masking.
        for v in sorted(self._neighbours):
            shared = self._channel.mask_secret(roster.keys[v][1])
            self._seeds[v] = masks.derive(shared, self._context, b"mask", self.client_id, v)
        escrow = masks.seal_escrow(self._escrow_key, self._context, self.client_id, list(self._seeds.values()))
        sealed = {}
        nonces = masks.nonces(len(holders))
        for i, (holder, b, s) in enumerate(zip(holders, self_shares, key_shares, strict=True)):
            if holder == self.client_id:
                self._held[holder] = (b, s)
                continue
            key = self._channel.share_key(roster.keys[holder][0], self.client_id, holder)  # once a session
            self._share_keys[holder] = key  # the same key opens what ``holder`` seals for us
            ad = masks.share_ad(self._context, self.client_id, holder)
            sealed[holder] = masks.seal_shares(key, ad, b, s, nonce=nonces[i])
        return ShareKeys(self.client_id, sealed, escrow)

    def masked_input(self, routed: Mapping[str, bytes], vector: np.ndarray) -> MaskedInput:
        """``vector`` (``uint64``, the quantised update) plus our self mask plus one pairwise mask
        per neighbour whose shares reached us (added towards a higher id, subtracted towards a
        lower: each pair's masks cancel in the sum)."""
        self._advance("send a masked input", "unmask")
        roster = self._roster
        assert roster is not None
        if not set(routed) <= self._neighbours:
            raise SecAggError(f"{self.client_id}: shares from clients that are not our neighbours")
        if len(routed) + 1 < roster.threshold:
            raise SecAggError(
                f"{self.client_id}: only {len(routed)} of our {len(self._neighbours)} neighbours shared keys, "
                f"below the threshold {roster.threshold}"
            )
        for u, sealed in routed.items():
            ad = masks.share_ad(self._context, u, self.client_id)
            self._held[u] = masks.open_shares(self._share_keys[u], ad, sealed)
        self._peers = frozenset(routed)
        y = np.array(vector, dtype=np.uint64, copy=True)
        masker = masks.Masker(y.size)
        masker.add(y, self._self_seed)
        for v in sorted(self._peers):
            if self.client_id < v:
                masker.add(y, self._seeds[v])
            else:
                masker.subtract(y, self._seeds[v])
        return MaskedInput(self.client_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """The shares we hold of our neighbours' (and our own) self masks if they sent a masked
        input, of their escrow keys if they did not."""
        self._advance("unmask", "done")
        roster = self._roster
        assert roster is not None
        if request.survivors & request.dropped:
            raise SecAggError(
                f"{self.client_id}: asked for both secrets of {sorted(request.survivors & request.dropped)}"
            )
        survivors = request.survivors & (self._peers | {self.client_id})
        dropped = request.dropped & self._peers
        # Our input stays hidden behind the masks we share with surviving neighbours: refuse to
        # help unmask it unless enough of them are in the sum with us.
        if self.client_id not in survivors or len(survivors) < roster.threshold:
            raise SecAggError(
                f"{self.client_id}: fewer of our neighbours survived than the threshold {roster.threshold}, or not us"
            )
        return UnmaskShares(
            self.client_id,
            {u: self._held[u][0] for u in sorted(survivors)},
            {u: self._held[u][1] for u in sorted(dropped)},
        )
