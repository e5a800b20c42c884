"""A client's long-lived keys: the X25519 ``c`` key pair that seals the shares it sends to its
neighbours and opens the ones they send it, and the ``s`` key pair that agrees its pairwise mask
secrets, both kept for a whole session.

Only the self-mask seed and the round's pair seeds must be fresh each round: the server may
rebuild the self-mask seed of a client that sent its masked input, and the pair seeds of one that
dropped out before (from the escrow, ``secagg.client``), so one round's must tell it nothing about
another's. Neither session key is ever shared nor rebuilt, and neither leaves its client: the
``c`` secret gives each pair a private, authenticated channel through the server, and the ``s``
secret is only ever read through HKDF with the round's context (session, round, attempt) and the
pair, which gives that round's pair seed and nothing else. So each client agrees each secret with
each peer once (cached here by the peer's public key: a peer that comes back with a new key is a
new entry), and a round needs an X25519 agreement only with a neighbour it has not met before
(docs/secure_aggregation.md, "Keys kept for the session").

Because a round's pair seeds follow from the ``s`` secrets and the round's context alone, a client
takes part in each context once (``claim_round``): run twice under one context, its two masked
inputs would share their pairwise masks and differ in their self masks, so a server that saw one
run's self mask and the other run's escrow would have its update.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.secagg import masks
from fedhive.secagg.errors import SecAggError


class _SessionKey:
    """One X25519 key pair and the secrets it agreed with peers' public keys."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._key = X25519PrivateKey.generate()
        self.public = masks.public_bytes(self._key)
        self.agreed: dict[bytes, bytes] = {}  # peer's public key -> the X25519 secret we share

    def secret(self, peer_public: bytes) -> bytes:
        shared = self.agreed.get(peer_public)
        if shared is None:
            if peer_public == self.public:
                raise SecAggError(f"a peer advertises our own {self._what} key")
            shared = masks.exchange(self._key, masks.parse_public(peer_public))
            self.agreed[peer_public] = shared
        return shared


class ChannelKeys:
    """One client's ``c`` and ``s`` key pairs for a session, and the secrets agreed with peers'."""

    def __init__(self) -> None:
        self._channel = _SessionKey("channel")
        self._mask = _SessionKey("mask")
        self.public = self._channel.public
        self.mask_public = self._mask.public
        self._rounds: set[bytes] = set()  # the contexts whose pair seeds we derived
        self._share_keys: dict[tuple[bytes, str], bytes] = {}  # (peer's c key, peer) -> the pair's share key

    def claim_round(self, context: bytes) -> None:
        """Called before deriving a round's pair seeds; ``SecAggError`` if ``context`` (session,
        round, attempt) was claimed before: the same seeds must never mask a second input."""
        if context in self._rounds:
            raise SecAggError(
                f"asked a second time to mask under {context.decode(errors='replace')}: "
                "refused (its pair seeds are already spent)"
            )
        self._rounds.add(context)

    def secret(self, peer_public: bytes) -> bytes:
        """The X25519 secret agreed with the holder of the ``c`` key ``peer_public``;
        ``SecAggError`` for a key that cannot be used (wrong length, low order)."""
        return self._channel.secret(peer_public)

    def share_key(self, peer_public: bytes, own_id: str, peer_id: str) -> bytes:
        """The AES-256-GCM key that seals the shares between us and ``peer_id`` (``c`` key
        ``peer_public``), both ways, every round of the session: derived once (HKDF of the ``c``
        secret, the pair bound in). Each message has its own random nonce and binds its round,
        sender and recipient as associated data (``masks.share_ad``), so one key serves them all."""
        key = self._share_keys.get((peer_public, peer_id))
        if key is None:
            key = masks.derive(self.secret(peer_public), masks.SESSION, b"share", own_id, peer_id)
            self._share_keys[(peer_public, peer_id)] = key
        return key

    def mask_secret(self, peer_public: bytes) -> bytes:
        """The X25519 secret agreed with the holder of the ``s`` key ``peer_public``: only ever
        read through HKDF with a round's context (``masks.derive``)."""
        return self._mask.secret(peer_public)

    @property
    def peers(self) -> int:
        """How many peers' channel secrets are kept (each agreed once this session)."""
        return len(self._channel.agreed)

    @property
    def mask_peers(self) -> int:
        """How many peers' mask secrets are kept (each agreed once this session)."""
        return len(self._mask.agreed)
