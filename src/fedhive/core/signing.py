"""HMAC-SHA256 signatures and replay protection for envelopes.

The signature covers the canonical JSON of the envelope without ``sig``; the payload is covered
through the sha256 in the envelope's payload descriptor, which the receiver checks against the
bytes. Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"))`` of the JSON-mode
dump: Python floats round-trip exactly through repr, so sender and receiver produce the same bytes.

Replays: a message id is accepted once while the verifier lives, and only within ``window_s`` of
its signed ``sent_at``. The ids die with the process, so a verifier given ``SenderClocks`` (a
coordinator's) also refuses every message signed before it was made: restarted after a crash, it
accepts nothing captured before (docs/networked.md, "Replays across a restart"). "Before" is in
each sender's own clock: ``SenderClocks`` keeps, per sender, how far ahead of ours its clock runs
(measured on every accepted message, kept with the coordinator's checkpoint), so that frames of a
sender whose clock runs ahead cannot slip past a fresh verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from fedhive.core.envelope import Envelope
from fedhive.errors import AuthenticationError


def canonical_bytes(env: Envelope) -> bytes:
    data = env.model_dump(mode="json", exclude={"sig"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(env: Envelope, secret: bytes) -> Envelope:
    sig = hmac.new(secret, canonical_bytes(env), hashlib.sha256).hexdigest()
    return env.model_copy(update={"sig": sig})


class SenderClocks:
    """Per sender, the most its clock was seen ahead of ours: ``sent_at - received`` of its
    accepted messages (negative for a clock that runs behind). Transit only lowers the figure, so
    ``restart + lead`` is never later, in the sender's clock, than the restart itself."""

    def __init__(self, leads: Mapping[str, float] | None = None) -> None:
        self._leads: dict[str, float] = {s: float(v) for s, v in (leads or {}).items() if math.isfinite(float(v))}

    def lead(self, sender: str) -> float:
        return self._leads.get(sender, 0.0)

    def note(self, sender: str, lead: float) -> None:
        if lead > self._leads.get(sender, -math.inf):
            self._leads[sender] = lead

    def snapshot(self) -> dict[str, float]:
        return dict(self._leads)


class Verifier:
    """Checks signatures against a secret lookup and rejects replays.

    A message is accepted once: its ``msg_id`` is remembered for ``window_s`` and any message whose
    ``sent_at`` is further than ``window_s`` from now is rejected, so the memory of ids is bounded.
    With ``clocks``, a message signed before the verifier was made (in its sender's clock) is
    rejected too: no id it carries can have been remembered.
    """

    def __init__(
        self,
        secret_of: Callable[[str], bytes | None],
        *,
        window_s: float = 300.0,
        max_remembered: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        clocks: SenderClocks | None = None,
    ) -> None:
        self._secret_of = secret_of
        self._window = window_s
        self._max = max_remembered
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._started = clock()
        self.clocks = clocks

    def verify(self, env: Envelope) -> None:
        if not env.sig:
            raise AuthenticationError(f"unsigned {env.kind} message from {env.sender!r}")
        secret = self._secret_of(env.sender)
        if secret is None:
            raise AuthenticationError(f"{env.kind} message from unknown sender {env.sender!r}")
        expected = hmac.new(secret, canonical_bytes(env), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, env.sig):
            raise AuthenticationError(f"forged {env.kind} message claiming to be from {env.sender!r}: bad signature")
        now = self._clock()
        if abs(now - env.sent_at) > self._window:
            raise AuthenticationError(
                f"{env.kind} message from {env.sender!r} sent {now - env.sent_at:.0f}s ago, outside the "
                f"{self._window:.0f}s replay window"
            )
        clocks = self.clocks
        if clocks is not None and env.sent_at < self._started + clocks.lead(env.sender):
            raise AuthenticationError(
                f"{env.kind} message {env.msg_id} from {env.sender!r} was signed before this node started: "
                "a replay, or one sent to an earlier process"
            )
        self._forget_older_than(now - self._window)
        if env.msg_id in self._seen:
            raise AuthenticationError(f"replayed {env.kind} message {env.msg_id} from {env.sender!r}")
        self._seen[env.msg_id] = env.sent_at
        if clocks is not None:
            clocks.note(env.sender, env.sent_at - now)

    def _forget_older_than(self, horizon: float) -> None:
        # Ids are appended in arrival order, which is close to sent_at order; trimming from the
        # front is enough because anything older than the horizon is rejected by the clock check.
        while self._seen and (next(iter(self._seen.values())) < horizon or len(self._seen) > self._max):
            self._seen.popitem(last=False)
