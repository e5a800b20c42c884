from __future__ import annotations

import numpy as np
import pytest

from fedhive.core import wire
from fedhive.core.envelope import Kind, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import AuthenticationError, PayloadError, ProtocolError

SECRETS = {"alice": b"alice-secret", "bob": b"bob-secret"}


def verifier(clock: list[float] | None = None) -> Verifier:
    now = clock or [1000.0]
    return Verifier(SECRETS.get, window_s=60, clock=lambda: now[0])


def envelope(sender: str = "alice", sent_at: float = 1000.0):
    msg = make(Kind.HEARTBEAT, sender, body={"status": "ONLINE", "loss": 0.125})
    return msg.envelope.model_copy(update={"sent_at": sent_at})


def test_signed_envelope_verifies_after_a_trip_through_json() -> None:
    env = sign(envelope(), SECRETS["alice"])
    frame = wire.encode_frame(env, None)
    received, payload = wire.decode_frame(frame, max_bytes=1 << 20)
    verifier().verify(received)
    assert payload is None and received == env


def test_unsigned_forged_unknown_and_replayed_are_rejected() -> None:
    v = verifier()
    with pytest.raises(AuthenticationError, match="unsigned"):
        v.verify(envelope())
    forged = sign(envelope(), b"wrong").model_copy()
    with pytest.raises(AuthenticationError, match="bad signature"):
        v.verify(forged)
    with pytest.raises(AuthenticationError, match="unknown sender 'mallory'"):
        v.verify(sign(envelope("mallory"), b"x"))
    good = sign(envelope(), SECRETS["alice"])
    v.verify(good)
    with pytest.raises(AuthenticationError, match="replayed"):
        v.verify(good)


def test_tampered_body_breaks_the_signature() -> None:
    good = sign(envelope(), SECRETS["alice"])
    tampered = good.model_copy(update={"body": {"status": "ONLINE", "loss": 0.0}})
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier().verify(tampered)


def test_old_messages_are_outside_the_replay_window() -> None:
    clock = [5000.0]
    with pytest.raises(AuthenticationError, match="outside the 60s replay window"):
        verifier(clock).verify(sign(envelope(sent_at=1000.0), SECRETS["alice"]))


def test_payload_digest_is_checked() -> None:
    p = Params({"w": np.ones(3, np.float32)})
    data = wire.payload_bytes(make(Kind.UPDATE, "alice", payload=p))
    assert data is not None
    env = sign(make(Kind.UPDATE, "alice").envelope.model_copy(update={"payload": wire.describe(data)}), b"k")
    frame = bytearray(wire.encode_frame(env, data))
    frame[-1] ^= 0xFF
    with pytest.raises(PayloadError, match="sha256 does not match"):
        wire.decode_frame(bytes(frame), max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"\x00\x00\x00\x05{}}}}", ProtocolError),
        (b"\x00\x00\x00\x02{}", ProtocolError),
        (b"\x00", ProtocolError),
        (b"\xff\xff\xff\xff" + b"x" * 10, ProtocolError),
    ],
)
def test_malformed_frames(frame: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        wire.decode_frame(frame, max_bytes=1 << 20)


def test_oversized_frame() -> None:
    with pytest.raises(PayloadError, match="exceeds the limit"):
        wire.decode_frame(b"x" * 100, max_bytes=50)
