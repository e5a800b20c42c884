"""The server's side of secure aggregation: it relays, sums and unmasks, and learns only the sum.

Four stages, each collecting one kind of message and then closed by the node that runs the round
(at its deadline, or once everyone answered):

    add_keys*      -> roster()          U1: who advertised keys (at least ``threshold``)
    add_shares*    -> routed()          U2: who shared keys; each gets the ciphertexts meant for it
    add_masked*    -> unmask_request()  U3: who sent a masked input (summed as they come)
    add_unmask*    -> result()          the sum of U3's quantised inputs, masks removed

Too few clients at any stage ends the round with ``SecAggError``, one line saying how many are
left and the threshold. The server holds a running sum, never a client's vector after adding it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.secagg import masks, shamir
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, Roster, ShareKeys, UnmaskRequest, UnmaskShares


def threshold_for(clients: int, fraction: float) -> int:
    """Shares needed to unmask: ``ceil(fraction * clients)``, at least 2 (with 1, a client's own
    shares would reveal it)."""
    return max(2, math.ceil(fraction * clients))


class SecAggServer:
    def __init__(self, context: bytes, vector_length: int, threshold_fraction: float, *, label: str = "") -> None:
        if not 0 < threshold_fraction <= 1:
            raise ValueError(f"threshold fraction must be in (0, 1], got {threshold_fraction}")
        self._context = context
        self._length = vector_length
        self._fraction = threshold_fraction
        self._label = label or "secure aggregation"
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._roster: Roster | None = None
        self._sealed: dict[str, Mapping[str, bytes]] = {}
        self._shared: frozenset[str] = frozenset()
        self._sum = np.zeros(vector_length, np.uint64)
        self._masked: set[str] = set()
        self._request: UnmaskRequest | None = None
        self._unmask: dict[str, UnmaskShares] = {}

    @property
    def threshold(self) -> int:
        assert self._roster is not None
        return self._roster.threshold

    def _enough(self, have: int, what: str) -> None:
        t = self.threshold
        if have < t:
            raise SecAggError(f"{self._label}: only {have} clients {what}, fewer than the threshold {t}: round aborted")

    # -- 1. keys ---------------------------------------------------------------------------------
    def add_keys(self, msg: AdvertiseKeys) -> None:
        if self._roster is not None or msg.client in self._keys:
            raise SecAggError(f"keys from {msg.client} out of place")
        self._keys[msg.client] = (msg.c_public, msg.s_public)

    def roster(self) -> Roster:
        if self._roster is None:
            n = len(self._keys)
            self._roster = Roster(dict(self._keys), threshold_for(n, self._fraction))
            if n < 2:
                raise SecAggError(f"{self._label}: {n} client advertised keys; secure aggregation needs at least 2")
            self._enough(n, "advertised keys")
        return self._roster

    # -- 2. shares -------------------------------------------------------------------------------
    def add_shares(self, msg: ShareKeys) -> None:
        roster = self._roster
        if roster is None or self._shared or msg.client not in roster.keys or msg.client in self._sealed:
            raise SecAggError(f"shares from {msg.client} out of place")
        if set(msg.sealed) != set(roster.keys) - {msg.client}:
            raise SecAggError(f"{msg.client} did not share with exactly the other clients of the roster")
        self._sealed[msg.client] = msg.sealed

    def routed(self) -> dict[str, dict[str, bytes]]:
        """For each client that shared keys: sender -> the ciphertext that sender sealed for it."""
        self._shared = frozenset(self._sealed)
        self._enough(len(self._shared), "shared keys")
        return {v: {u: self._sealed[u][v] for u in sorted(self._shared) if u != v} for v in sorted(self._shared)}

    # -- 3. masked inputs --------------------------------------------------------------------------
    def add_masked(self, msg: MaskedInput) -> None:
        if not self._shared or self._request is not None or msg.client not in self._shared:
            raise SecAggError(f"masked input from {msg.client} out of place")
        if msg.client in self._masked:
            raise SecAggError(f"second masked input from {msg.client}")
        v = msg.vector
        if v.dtype != np.uint64 or v.shape != (self._length,):
            raise SecAggError(f"masked input from {msg.client} is not {self._length} uint64 values")
        self._sum += v  # modulo 2**64
        self._masked.add(msg.client)

    def unmask_request(self) -> UnmaskRequest:
        if self._request is None:
            self._request = UnmaskRequest(frozenset(self._masked), self._shared - self._masked)
            self._enough(len(self._masked), "sent a masked input")
        return self._request

    # -- 4. unmasking ------------------------------------------------------------------------------
    def add_unmask(self, msg: UnmaskShares) -> None:
        r = self._request
        if r is None or msg.client not in r.survivors or msg.client in self._unmask:
            raise SecAggError(f"unmasking shares from {msg.client} out of place")
        if set(msg.self_mask) != r.survivors or set(msg.mask_key) != r.dropped:
            raise SecAggError(f"{msg.client} did not send exactly the shares asked for")
        self._unmask[msg.client] = msg

    def result(self) -> np.ndarray:
        """The sum of the survivors' quantised inputs (``uint64``, modulo 2**64)."""
        r, roster = self._request, self._roster
        if r is None or roster is None:
            raise SecAggError("unmasking before the masked inputs were closed")
        self._enough(len(self._unmask), "sent unmasking shares")
        holders = sorted(self._unmask, key=roster.point)[: roster.threshold]
        coefficients = shamir.lagrange_at_zero([roster.point(c) for c in holders])
        total = self._sum.copy()
        for u in sorted(r.survivors):
            seed = self._recover([self._unmask[c].self_mask[u] for c in holders], coefficients, masks.SEED_BYTES)
            total -= masks.expand(seed, self._length)
        for u in sorted(r.dropped):
            raw = self._recover([self._unmask[c].mask_key[u] for c in holders], coefficients, masks.KEY_BYTES)
            key = X25519PrivateKey.from_private_bytes(raw)
            for v in sorted(r.survivors):  # v added +mask towards a higher id, -mask towards a lower
                seed = masks.agree(key, roster.keys[v][1], self._context, b"mask", u, v)
                if v < u:
                    total -= masks.expand(seed, self._length)
                else:
                    total += masks.expand(seed, self._length)
        return total

    def _recover(self, ys: list[int], coefficients: list[int], length: int) -> bytes:
        try:
            return shamir.combine(ys, coefficients, length)
        except ValueError as exc:
            raise SecAggError(f"{self._label}: {exc}") from None
