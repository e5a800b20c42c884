"""Who may write, and who may give back, which claim check (docs/networked.md, "Claim checks").

A node that runs rounds hands each participant, with its TRAIN, a key of its own to write the
answer to (an upload grant) and accepts an answer's claim only under a key it issued to that
sender, once. On a local store, where claims are named by their digest alone, it remembers which
sender named which claim first: another sender naming a claim that is held is refused, so no
sender can make it give back (recycle) a claim that is not its own. The other side of a grant, a
node that was offered one, keeps it until it answers that round.

The body fields below are named for the typed message bodies to fold in.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedhive.core.envelope import Envelope
from fedhive.errors import ProtocolError
from fedhive.transports import claim_urls

PAYLOAD_URL = "claim_get_url"  # any message with a claim-checked payload: a presigned GET for it
UPLOAD_URL = "claim_put_url"  # TRAIN: a presigned PUT for the answer's claim-checked payload...
UPLOAD_KEY = "claim_put_key"  # ...and that object's key
CLAIM_KEY = "claim_key"  # the answer (UPDATE, PARTIAL): the issued key its payload was written to

Fetch = Callable[[], bytes]
MAX_OFFERS = 64  # grants a node keeps from the nodes it answers: one per round in flight is enough


@dataclass(frozen=True)
class Grant:
    """A URL to PUT one answer to, and the key it opens."""

    url: str
    key: str

    def upload(self, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
        """Blocking. Write the concatenation of ``parts``; returns its (sha256 hex, size)."""
        digest, size = hashlib.sha256(), 0
        for part in parts:
            digest.update(part)
            size += memoryview(part).nbytes
        claim_urls.upload(self.url, parts)
        return digest.hexdigest(), size


class ClaimLedger:
    """Thread-safe: encoding and decoding run in worker threads for big payloads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[tuple[str, str], float] = {}  # (owner, key) -> when the grant expires
        self._offered: dict[tuple[str, str, int], Grant] = {}  # (granter, session, round) -> grant
        self._held: dict[str, tuple[str, float]] = {}  # claim ref -> (sender, when named)

    # -- the granting side ----------------------------------------------------------------------------
    def issue(self, owner: str, key: str, ttl_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._issued = {k: t for k, t in self._issued.items() if t > now}
            self._issued[(owner, key)] = now + ttl_s

    def redeem(self, sender: str, key: str) -> bool:
        """True, once, if ``key`` was issued to ``sender`` and has not expired."""
        with self._lock:
            expires = self._issued.pop((sender, key), None)
        return expires is not None and expires > time.monotonic()

    def claim(self, sender: str, ref: str, ttl_s: float) -> None:
        """Note that ``sender`` named the claim ``ref``; ``ProtocolError`` if another sender holds
        it (its message is refused and logged by the transport: it never reaches a round)."""
        now = time.monotonic()
        with self._lock:
            if len(self._held) > 4096:  # claims whose messages never reached a round, long ago
                self._held = {r: h for r, h in self._held.items() if now - h[1] < ttl_s}
            holder = self._held.get(ref)
            if holder is not None and holder[0] != sender and now - holder[1] < ttl_s:
                raise ProtocolError(f"{sender} names a claim check that {holder[0]} sent; refused")
            self._held[ref] = (sender, now)

    def release(self, sender: str, ref: str) -> bool:
        """Forget ``sender``'s hold on ``ref``; False if it is not ``sender``'s to give back."""
        with self._lock:
            holder = self._held.get(ref)
            if holder is None or holder[0] != sender:
                return False
            del self._held[ref]
            return True

    # -- the answering side ---------------------------------------------------------------------------
    def offered(self, env: Envelope) -> None:
        """Keep the upload grant an (authenticated) message offers, for the answer to its round."""
        url, key = env.body.get(UPLOAD_URL), env.body.get(UPLOAD_KEY)
        if not isinstance(url, str) or not isinstance(key, str):
            return
        with self._lock:
            self._offered[(env.sender, env.session_id, env.round)] = Grant(url, key)
            while len(self._offered) > MAX_OFFERS:
                del self._offered[next(iter(self._offered))]  # the oldest

    def take(self, to: str, env: Envelope) -> Grant | None:
        """The grant ``to`` offered for the round ``env`` answers, used once."""
        with self._lock:
            return self._offered.pop((to, env.session_id, env.round), None)
