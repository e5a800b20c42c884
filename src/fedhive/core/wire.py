"""One message as bytes: a frame any byte transport (AMQP, HTTP, a file) can carry.

    frame = uint32 big-endian envelope length | envelope JSON | payload bytes

The envelope's payload descriptor gives the payload's length and sha256; a claim-check reference
(``ref``) means the payload bytes live in the artifact store and the frame carries none.
"""

from __future__ import annotations

import hashlib
import struct

from pydantic import ValidationError

from fedhive.core import codec, residency
from fedhive.core.envelope import PROTOCOL_VERSION, Deferred, Envelope, Message, PayloadDescriptor
from fedhive.core.params import Params
from fedhive.errors import PayloadError, ProtocolError

MAX_ENVELOPE_BYTES = 1024 * 1024
_HASH_CHUNK = 4 * 1024 * 1024  # a memory-mapped payload is hashed (and its pages dropped) this much at a time


def payload_bytes(message: Message) -> bytes | None:
    """The payload as bytes, encoding ``Params`` once with safetensors."""
    p = message.payload
    if p is None:
        return None
    if isinstance(p, Params):
        return codec.encode(p)
    if isinstance(p, Deferred):  # a relayed claim check (a combiner forwarding an update)
        data = p.load()
        return data if isinstance(data, bytes) else bytes(data)
    return p if isinstance(p, bytes) else bytes(p)


def describe(data: bytes, ref: str | None = None) -> PayloadDescriptor:
    return PayloadDescriptor(codec=codec.CODEC, nbytes=len(data), sha256=hashlib.sha256(data).hexdigest(), ref=ref)


def encode_frame(env: Envelope, payload: bytes | None) -> bytes:
    """``env`` must already carry its payload descriptor and signature."""
    head = env.model_dump_json().encode()
    parts = [struct.pack(">I", len(head)), head]
    if payload is not None and (env.payload is None or env.payload.ref is None):
        parts.append(payload)
    return b"".join(parts)


def decode_frame(frame: bytes, *, max_bytes: int) -> tuple[Envelope, memoryview | None]:
    """Split and validate a frame. Checks size, envelope schema, version and payload digest."""
    if len(frame) > max_bytes:
        raise PayloadError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    if len(frame) < 4:
        raise ProtocolError("message is shorter than its frame header")
    (hlen,) = struct.unpack(">I", frame[:4])
    if hlen > min(MAX_ENVELOPE_BYTES, len(frame) - 4):
        raise ProtocolError(f"envelope length {hlen} is out of range")
    try:
        env = Envelope.model_validate_json(frame[4 : 4 + hlen])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "envelope"
        raise ProtocolError(f"malformed envelope: {where}: {first['msg']}") from None
    if env.v != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {env.v} (this node speaks {PROTOCOL_VERSION})")
    rest = memoryview(frame)[4 + hlen :]
    desc = env.payload
    if desc is None or desc.ref is not None:
        if len(rest):
            raise ProtocolError("message carries bytes its envelope does not describe")
        return env, None
    verify_payload(rest, desc)
    return env, rest


def verify_payload(data: bytes | memoryview, desc: PayloadDescriptor) -> None:
    if len(data) != desc.nbytes:
        raise PayloadError(f"payload is {len(data)} bytes, its envelope says {desc.nbytes}")
    if _sha256(data) != desc.sha256:
        raise PayloadError("payload sha256 does not match its envelope")


def _sha256(data: bytes | memoryview) -> str:
    if len(data) < residency.RELEASE_MIN_BYTES:
        return hashlib.sha256(data).hexdigest()
    # Chunk by chunk: a memory-mapped claim check gives each chunk's pages back behind us, so that
    # checking a 100 MB update does not make all of it resident at once.
    digest = hashlib.sha256()
    for chunk in residency.read_once(memoryview(data).cast("B"), _HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
