"""The cryptography of secure aggregation, all from ``cryptography``'s primitives.

- Key agreement: X25519. Each client has two key pairs per round: ``c`` encrypts the shares it
  sends to the others, ``s`` agrees the pairwise mask seeds. A shared secret goes through HKDF-SHA256
  with the round's context and the (sorted) pair of ids, so a seed is never reused across sessions,
  rounds, attempts, pairs or purposes.
- Masks: AES-256-CTR keystream of a 32-byte seed (a zero counter block is safe: each key is used for
  one stream only), read as ``uint64`` with ``numpy.frombuffer``.
- Shares between clients: AES-256-GCM under the agreed ``c`` key, the sender, recipient and round
  bound in as associated data, so a relaying server can neither read, alter nor redirect them.
"""

from __future__ import annotations

import os

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
KEY_BYTES = 32
NONCE_BYTES = 12
_ZERO_COUNTER = bytes(16)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def agree(own: X25519PrivateKey, peer_public: bytes, context: bytes, purpose: bytes, a: str, b: str) -> bytes:
    """The 32-byte key two clients ``a`` and ``b`` both derive for ``purpose`` in this round."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        shared = own.exchange(peer)
    except ValueError as exc:  # a malformed or low-order public key
        raise SecAggError(f"unusable public key: {exc}") from None
    low, high = sorted((a, b))
    info = b"fedhive-secagg/" + purpose + b"/" + context + b"/" + _length_prefixed(low) + _length_prefixed(high)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ``uint64`` values from ``seed`` (AES-256-CTR keystream)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=np.uint64).copy()  # writable, and independent of ``stream``


def seal_shares(key: bytes, ad: bytes, self_mask_share: int, key_share: int) -> bytes:
    """The two shares one client gives another, encrypted and authenticated."""
    nonce = os.urandom(NONCE_BYTES)
    plain = shamir.to_bytes(self_mask_share) + shamir.to_bytes(key_share)
    return nonce + AESGCM(key).encrypt(nonce, plain, ad)


def open_shares(key: bytes, ad: bytes, sealed: bytes) -> tuple[int, int]:
    if len(sealed) != NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16:
        raise SecAggError("an encrypted share has the wrong length")
    try:
        plain = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise SecAggError("an encrypted share does not authenticate (altered, or not meant for us)") from None
    try:
        return shamir.from_bytes(plain[: shamir.SHARE_BYTES]), shamir.from_bytes(plain[shamir.SHARE_BYTES :])
    except ValueError as exc:
        raise SecAggError(str(exc)) from None


def share_ad(context: bytes, sender: str, recipient: str) -> bytes:
    return b"fedhive-secagg/share/" + context + b"/" + _length_prefixed(sender) + _length_prefixed(recipient)


def _length_prefixed(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw
