"""The cryptography of secure aggregation, all from ``cryptography``'s primitives.

- Key agreement: X25519. Each client has two key pairs, both kept for the session
  (``secagg.channel``): ``c`` encrypts the shares it sends to its neighbours, ``s`` agrees the
  pairwise mask secrets. A shared secret goes through HKDF-SHA256 with the round's context and the
  (sorted) pair of ids, so a seed is never reused across sessions, rounds, attempts, pairs or
  purposes, and one round's seed tells nothing of another's.
- Escrow: a client seals its round's pair seeds under a fresh random key used for that one message
  (AES-256-GCM) and Shamir-shares that key, so the server can rebuild that round's seeds (never the
  session secrets) of a client that drops out before masking.
- Masks: AES-128-CTR keystream keyed by the first 16 bytes of a 32-byte seed (a zero counter
  block is safe: each key is used for one stream only), written into a reused buffer and read as
  ``uint64`` (``Masker``). 128-bit keys: the X25519 agreements the pair seeds come from give
  128-bit security, so AES-256 bought nothing, at 14 rounds a block instead of 10.
- Shares between clients: AES-256-GCM under a key each pair derives once a session from its ``c``
  secret (``ChannelKeys.share_key``), a fresh random nonce per message, and the sender, recipient
  and round bound in as associated data, so a relaying server can neither read, alter, replay
  into another round nor redirect them.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhive.secagg import shamir
from fedhive.secagg.errors import SecAggError

SEED_BYTES = 32
MASK_KEY_BYTES = 16  # a mask stream's AES-128 key: the first half of its seed
KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_BYTES = NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16
_ZERO_COUNTER = bytes(16)
# One mode object for every stream (it only holds the counter block): building one per stream was
# a third of a stream's set-up. Each stream still has its own key and encryptor.
_CTR = modes.CTR(_ZERO_COUNTER)
_SHA256 = hashes.SHA256()
_AES_BLOCK = 16
_ESCROW_NONCE = bytes(NONCE_BYTES)  # each escrow key seals exactly one message


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def parse_public(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SecAggError(f"unusable public key: {exc}") from None


def exchange(own: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    """The raw X25519 secret of ``own`` and ``peer``: only ever used through ``derive``."""
    try:
        return own.exchange(peer)
    except ValueError as exc:  # a low-order public key
        raise SecAggError(f"unusable public key: {exc}") from None


SESSION = b"session"  # the ``context`` of a key derived once a session (``ChannelKeys.share_key``)


def derive(shared: bytes, context: bytes, purpose: bytes, a: str, b: str) -> bytes:
    """The 32-byte key for ``purpose`` in the round of ``context`` from the X25519 secret of the
    pair ``a``, ``b`` (in either order): HKDF-SHA256, distinct per session, round, attempt, pair
    and purpose, so a secret kept for the session still gives a fresh key each round."""
    low, high = (a, b) if a < b else (b, a)
    info = _prefix(purpose, context) + _length_prefixed(low) + _length_prefixed(high)
    return HKDF(algorithm=_SHA256, length=KEY_BYTES, salt=None, info=info).derive(shared)


@lru_cache(maxsize=64)
def _prefix(purpose: bytes, context: bytes) -> bytes:
    return b"fedhive-secagg/" + purpose + b"/" + context + b"/"


@lru_cache(maxsize=8)
def _zeros(nbytes: int) -> bytes:
    return bytes(nbytes)


class Masker:
    """Adds masks to ``uint64`` vectors of one length: each mask is a seed's AES-128-CTR keystream,
    expanded into one buffer that every mask reuses (no allocation, no copy per mask)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._zeros = _zeros(8 * length)
        self._buffer = bytearray(8 * length + _AES_BLOCK - 1)  # update_into's room for a block
        self._stream = np.frombuffer(self._buffer, dtype=np.uint64, count=length)

    def stream(self, seed: bytes) -> np.ndarray:
        """The mask of ``seed``: a view of the buffer, overwritten by the next call."""
        encryptor = Cipher(algorithms.AES(seed[:MASK_KEY_BYTES]), _CTR).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        encryptor.finalize()
        return self._stream

    def add(self, vector: np.ndarray, seed: bytes) -> None:
        np.add(vector, self.stream(seed), out=vector)  # modulo 2**64

    def subtract(self, vector: np.ndarray, seed: bytes) -> None:
        np.subtract(vector, self.stream(seed), out=vector)


def nonces(count: int) -> list[bytes]:
    """``count`` random AES-GCM nonces from one read of the OS's CSPRNG (one read per nonce cost
    as much as the sealing itself). Each key seals one message per direction, so a random nonce
    never repeats under a key but with probability 2**-96."""
    raw = os.urandom(NONCE_BYTES * count)
    return [raw[i : i + NONCE_BYTES] for i in range(0, len(raw), NONCE_BYTES)]


def seal_shares(key: bytes, ad: bytes, self_mask_share: int, key_share: int, *, nonce: bytes | None = None) -> bytes:
    """The two shares one client gives another, encrypted and authenticated (``nonce``: a fresh
    random one of ``nonces``; drawn here if not given)."""
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    plain = shamir.to_bytes(self_mask_share) + shamir.to_bytes(key_share)
    return nonce + AESGCM(key).encrypt(nonce, plain, ad)


def open_shares(key: bytes, ad: bytes, sealed: bytes) -> tuple[int, int]:
    if len(sealed) != SEALED_BYTES:
        raise SecAggError("an encrypted share has the wrong length")
    try:
        plain = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise SecAggError("an encrypted share does not authenticate (altered, or not meant for us)") from None
    try:
        return shamir.from_bytes(plain[: shamir.SHARE_BYTES]), shamir.from_bytes(plain[shamir.SHARE_BYTES :])
    except ValueError as exc:
        raise SecAggError(str(exc)) from None


def seal_escrow(key: bytes, context: bytes, client: str, seeds: list[bytes]) -> bytes:
    """``client``'s pair seeds of this round, in its neighbours' sorted order, sealed under
    ``key``: a fresh random key that seals this one message, so a fixed nonce is safe."""
    return AESGCM(key).encrypt(_ESCROW_NONCE, b"".join(seeds), escrow_ad(context, client))


def open_escrow(key: bytes, context: bytes, client: str, sealed: bytes, count: int) -> list[bytes]:
    """The ``count`` pair seeds ``seal_escrow`` sealed; ``SecAggError`` if they do not authenticate
    (a wrong key, another round's or client's escrow)."""
    if len(sealed) != escrow_bytes(count):
        raise SecAggError(f"{client}'s escrowed seeds have {len(sealed)} bytes, not {escrow_bytes(count)}")
    try:
        plain = AESGCM(key).decrypt(_ESCROW_NONCE, sealed, escrow_ad(context, client))
    except InvalidTag:
        raise SecAggError(f"{client}'s escrowed seeds do not authenticate under its rebuilt key") from None
    return [plain[i : i + SEED_BYTES] for i in range(0, len(plain), SEED_BYTES)]


def escrow_bytes(count: int) -> int:
    return count * SEED_BYTES + 16


def escrow_ad(context: bytes, client: str) -> bytes:
    return _prefix(b"escrow", context) + _length_prefixed(client)


def share_ad(context: bytes, sender: str, recipient: str) -> bytes:
    return _prefix(b"share", context) + _length_prefixed(sender) + _length_prefixed(recipient)


@lru_cache(maxsize=65536)  # every id is prefixed once per pair and purpose: cache each once
def _length_prefixed(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw
