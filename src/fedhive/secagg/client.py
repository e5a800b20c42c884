"""One client's side of secure aggregation (Bonawitz et al. 2017, the honest-but-curious version).

A client takes the four steps in order, each answering what the server sent: ``advertise`` ->
``share_keys(roster)`` -> ``masked_input(routed, vector)`` -> ``unmask(request)``. A step out of
order, or a request that would make it reveal both secrets of one client (its self mask and its
mask key: together they unmask that client's input), is refused with ``SecAggError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.secagg import masks, shamir
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, Roster, ShareKeys, UnmaskRequest, UnmaskShares


class SecAggClient:
    def __init__(self, client_id: str, context: bytes) -> None:
        self.client_id = client_id
        self._context = context
        self._step = "advertise"
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._self_seed = os.urandom(masks.SEED_BYTES)
        self._roster: Roster | None = None
        self._held: dict[str, tuple[int, int]] = {}  # client -> (self-mask share, mask-key share) we hold
        self._peers: frozenset[str] = frozenset()  # those whose shares we hold: our masks pair with them

    def _advance(self, expected: str, following: str) -> None:
        if self._step != expected:
            raise SecAggError(f"{self.client_id}: asked to {expected} while waiting to {self._step}")
        self._step = following

    def advertise(self) -> AdvertiseKeys:
        self._advance("advertise", "share keys")
        return AdvertiseKeys(self.client_id, masks.public_bytes(self._c_key), masks.public_bytes(self._s_key))

    def share_keys(self, roster: Roster) -> ShareKeys:
        self._advance("share keys", "send a masked input")
        ids = roster.ids
        if self.client_id not in roster.keys:
            raise SecAggError(f"{self.client_id}: the roster leaves us out")
        if not 2 <= roster.threshold <= len(ids):
            raise SecAggError(f"threshold {roster.threshold} is not between 2 and the {len(ids)} clients")
        publics = [k for pair in roster.keys.values() for k in pair]
        if len(set(publics)) != len(publics):
            raise SecAggError("the roster repeats a public key")
        self._roster = roster
        own_secret = self._s_key.private_bytes_raw()
        self_shares = shamir.split(self._self_seed, len(ids), roster.threshold)
        key_shares = shamir.split(own_secret, len(ids), roster.threshold)
        sealed = {}
        for (x, b), (_, s), other in zip(self_shares, key_shares, ids, strict=True):
            if other == self.client_id:
                self._held[other] = (b, s)
                continue
            key = masks.agree(self._c_key, roster.keys[other][0], self._context, b"share", self.client_id, other)
            ad = masks.share_ad(self._context, self.client_id, other)
            sealed[other] = masks.seal_shares(key, ad, b, s)
            assert x == roster.point(other)
        return ShareKeys(self.client_id, sealed)

    def masked_input(self, routed: Mapping[str, bytes], vector: np.ndarray) -> MaskedInput:
        """``vector`` (``uint64``, the quantised update) plus our self mask plus one pairwise mask
        per client whose shares reached us (added towards a higher id, subtracted towards a lower:
        each pair's masks cancel in the sum)."""
        self._advance("send a masked input", "unmask")
        roster = self._roster
        assert roster is not None
        if any(u not in roster.keys or u == self.client_id for u in routed):
            raise SecAggError(f"{self.client_id}: shares from clients outside the roster")
        if len(routed) + 1 < roster.threshold:
            raise SecAggError(f"{self.client_id}: only {len(routed) + 1} clients shared keys, below the threshold")
        for u, sealed in routed.items():
            key = masks.agree(self._c_key, roster.keys[u][0], self._context, b"share", self.client_id, u)
            self._held[u] = masks.open_shares(key, masks.share_ad(self._context, u, self.client_id), sealed)
        self._peers = frozenset(routed)
        y = np.array(vector, dtype=np.uint64, copy=True)
        y += masks.expand(self._self_seed, y.size)
        for v in sorted(self._peers):
            seed = masks.agree(self._s_key, roster.keys[v][1], self._context, b"mask", self.client_id, v)
            if self.client_id < v:
                y += masks.expand(seed, y.size)
            else:
                y -= masks.expand(seed, y.size)
        return MaskedInput(self.client_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        self._advance("unmask", "done")
        roster = self._roster
        assert roster is not None
        if request.survivors & request.dropped:
            raise SecAggError(
                f"{self.client_id}: asked for both secrets of {sorted(request.survivors & request.dropped)}"
            )
        known = self._peers | {self.client_id}
        if not request.survivors | request.dropped <= known:
            raise SecAggError(f"{self.client_id}: asked about clients whose shares it does not hold")
        if self.client_id not in request.survivors or len(request.survivors) < roster.threshold:
            raise SecAggError(f"{self.client_id}: fewer survivors than the threshold {roster.threshold}, or not us")
        return UnmaskShares(
            self.client_id,
            {u: self._held[u][0] for u in sorted(request.survivors)},
            {u: self._held[u][1] for u in sorted(request.dropped)},
        )
