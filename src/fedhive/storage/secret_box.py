"""Client secrets at rest: sealed with the server's key before they reach the database.

The coordinator needs each node's HMAC key itself (to check and make signatures), so the key
cannot be stored as a one-way hash the way passwords are. It is sealed instead: AES-256-GCM under a
key the database never holds (``Settings.secret_box``: ``FEDHIVE_SECRETS_KEY`` or a 0600 key file
in the service's home), with the client id as associated data, so a sealed value copied onto
another client's row does not open. A copy of the database, or of a backup, holds no usable secret.

Stored form: ``aesgcm:`` + URL-safe base64 of nonce (12 bytes) + ciphertext + tag (16 bytes);
103 characters for a 43-character secret, which fits the ``clients.secret`` column as it is. A
value without the prefix is a row written before sealing existed (never contains ``:``); it is
read as it is and sealed by ``users_repo.seal_plaintext_client_secrets`` when the service starts.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedhive.errors import ConfigError, StorageError

KEY_BYTES = 32
_NONCE_BYTES = 12
SEALED_PREFIX = "aesgcm:"


def new_key_text() -> str:
    """A fresh key, as ``FEDHIVE_SECRETS_KEY`` and the key file hold it (URL-safe base64)."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=8 * KEY_BYTES)).decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


class SecretBox:
    def __init__(self, key_text: str, *, origin: str) -> None:
        """``key_text`` as ``new_key_text`` makes it; ``origin`` names where it came from, for errors."""
        try:
            key = base64.urlsafe_b64decode(key_text.strip().encode())
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"{origin}: not a secrets key ({KEY_BYTES} bytes in URL-safe base64); make one with: "
                "python -c 'from fedhive.storage.secret_box import new_key_text; print(new_key_text())'"
            )
        self._aead = AESGCM(key)

    def seal(self, secret: str, *, client_id: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond any number of clients
        sealed = self._aead.encrypt(nonce, secret.encode(), client_id.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, *, client_id: str) -> str:
        """The secret a stored value holds; a value from before sealing is returned as it is."""
        if not is_sealed(stored):
            return stored
        try:
            raw = base64.urlsafe_b64decode(stored[len(SEALED_PREFIX) :].encode())
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], client_id.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise StorageError(
                f"the secret of client {client_id!r} does not open with this server's secrets key: the database "
                "was written with another key (FEDHIVE_SECRETS_KEY or HOME/secrets-key), or the row was altered"
            ) from None
