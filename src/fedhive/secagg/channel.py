"""A client's long-lived channel key: the X25519 ``c`` key pair that seals the shares it sends to
its neighbours and opens the ones they send it, kept for a whole session.

Only the ``s`` key (mask seeds) and the self-mask seed must be fresh each round: the server may
rebuild them (the ``s`` key of a client that dropped out, the self-mask seed of one that did not),
so one round's must tell it nothing about another's. The ``c`` key is never shared nor rebuilt;
it only gives each pair of clients a private, authenticated channel through the server. So each
client keeps one ``c`` key pair for the session and agrees the X25519 secret with each peer's
``c`` public key once (cached here by that public key: a peer that comes back with a new key is a
new entry). Each round's AES-GCM key is still derived afresh from that secret with HKDF over the
round's context (session, round, attempt) and the pair, so no key seals more than one message per
direction and random 96-bit nonces never repeat but with probability 2**-96
(docs/secure_aggregation.md, "Keys kept for the session"). This halves a round's X25519 work.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.secagg import masks
from fedhive.secagg.errors import SecAggError


class ChannelKeys:
    """One client's ``c`` key pair for a session, and the secrets it agreed with its peers'."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()
        self.public = masks.public_bytes(self._key)
        self._agreed: dict[bytes, bytes] = {}  # peer's c public key -> the X25519 secret we share

    def secret(self, peer_public: bytes) -> bytes:
        """The X25519 secret agreed with the holder of ``peer_public``; ``SecAggError`` for a key
        that cannot be used (wrong length, low order)."""
        shared = self._agreed.get(peer_public)
        if shared is None:
            if peer_public == self.public:
                raise SecAggError("a peer advertises our own channel key")
            shared = masks.exchange(self._key, masks.parse_public(peer_public))
            self._agreed[peer_public] = shared
        return shared

    @property
    def peers(self) -> int:
        """How many peers' secrets are kept (each agreed once this session)."""
        return len(self._agreed)
