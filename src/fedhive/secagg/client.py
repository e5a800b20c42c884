"""One client's side of secure aggregation: SecAgg+ (Bell et al. 2020) over the steps of Bonawitz
et al. 2017, the honest-but-curious version.

A client takes the four steps in order, each answering what the server sent: ``advertise`` ->
``share_keys(roster)`` -> ``masked_input(routed, vector)`` -> ``unmask(request)``. It deals only
with its neighbours in the roster's graph: it shares its secrets among them (and keeps one share),
and masks its input towards those of them whose shares reached it. A step out of order, or a
request that would make it reveal both secrets of one client (its self mask and its mask key:
together they unmask that client's input), is refused with ``SecAggError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.secagg import masks, shamir
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.graph import degree
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, Roster, ShareKeys, UnmaskRequest, UnmaskShares


class SecAggClient:
    def __init__(
        self, client_id: str, context: bytes, channel: ChannelKeys | None = None, s_key: X25519PrivateKey | None = None
    ) -> None:
        """One round (``context``) of ``client_id``. ``channel``: its ``c`` key pair kept for the
        session (``secagg.channel``); None makes one for this round alone. ``s_key``: the mask key
        pair this client advertised ahead of the round (``secagg.node_client``: with its previous
        masked input), never used before; None makes one. The ``s`` key and the self-mask seed are
        always this round's own: whoever passes ``s_key`` must never pass it again."""
        self.client_id = client_id
        self._context = context
        self._step = "advertise"
        self._channel = channel if channel is not None else ChannelKeys()
        self._s_key = s_key if s_key is not None else X25519PrivateKey.generate()
        self._self_seed = os.urandom(masks.SEED_BYTES)
        self._roster: Roster | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._share_keys: dict[str, bytes] = {}  # neighbour -> the AES-GCM key we both derive for shares
        self._held: dict[str, tuple[int, int]] = {}  # client -> (self-mask share, mask-key share) we hold
        self._peers: frozenset[str] = frozenset()  # neighbours whose shares we hold: our masks pair with them

    def _advance(self, expected: str, following: str) -> None:
        if self._step != expected:
            raise SecAggError(f"{self.client_id}: asked to {expected} while waiting to {self._step}")
        self._step = following

    def advertise(self) -> AdvertiseKeys:
        self._advance("advertise", "share keys")
        return AdvertiseKeys(self.client_id, self._channel.public, masks.public_bytes(self._s_key))

    def share_keys(self, roster: Roster) -> ShareKeys:
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
        if roster.keys[self.client_id] != (self._channel.public, masks.public_bytes(self._s_key)):
            raise SecAggError(f"{self.client_id}: the roster does not hold the keys we advertised")
        self._roster = roster
        self._neighbours = roster.neighbours_of(self.client_id)
        if missing := sorted(self._neighbours - roster.keys.keys()):
            raise SecAggError(f"{self.client_id}: the roster lacks the keys of our neighbours {missing[:5]}")
        holders = sorted(self._neighbours | {self.client_id}, key=roster.point)
        xs = [roster.point(h) for h in holders]
        self_shares = shamir.split(self._self_seed, xs, t)
        key_shares = shamir.split(self._s_key.private_bytes_raw(), xs, t)
        sealed = {}
        nonces = masks.nonces(len(holders))
        for i, (holder, b, s) in enumerate(zip(holders, self_shares, key_shares, strict=True)):
            if holder == self.client_id:
                self._held[holder] = (b, s)
                continue
            shared = self._channel.secret(roster.keys[holder][0])  # agreed once a session per peer key
            key = masks.derive(shared, self._context, b"share", self.client_id, holder)  # this round's
            self._share_keys[holder] = key  # the same key opens what ``holder`` seals for us
            ad = masks.share_ad(self._context, self.client_id, holder)
            sealed[holder] = masks.seal_shares(key, ad, b, s, nonce=nonces[i])
        return ShareKeys(self.client_id, sealed)

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
            seed = masks.agree(self._s_key, roster.mask_public(v), self._context, b"mask", self.client_id, v)
            if self.client_id < v:
                masker.add(y, seed)
            else:
                masker.subtract(y, seed)
        return MaskedInput(self.client_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """The shares we hold of our neighbours' (and our own) self masks if they sent a masked
        input, of their mask keys if they did not."""
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
