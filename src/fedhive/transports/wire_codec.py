"""Messages <-> signed frames, shared by every transport that leaves the process.

Encoding serialises ``Params`` once, hashes once, moves payloads above the claim-check threshold
to the artifact store, and signs. Decoding checks size, schema, signature, replay and digest
before the payload can reach a node. Payloads of more than 1 MiB are hashed and (de)serialised in
a worker thread so a large model never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fedhive.core import codec, wire
from fedhive.core.envelope import Deferred, Message, PayloadDescriptor
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import PayloadError, ProtocolError
from fedhive.storage.artifacts import ArtifactStore, digest_of

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_CLAIM_CHECK_BYTES = 8 * 1024 * 1024
_OFFLOAD_BYTES = 1024 * 1024

T = TypeVar("T")
KeyLookup = Callable[[str], bytes | None]


@dataclass
class WireCodec:
    """``signing_key(recipient)`` gives the HMAC key for a message to that node or topic;
    ``verifier`` checks incoming messages (signature, sender, replay)."""

    signing_key: KeyLookup
    verifier: Verifier
    artifacts: ArtifactStore | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    claim_check_bytes: int = DEFAULT_CLAIM_CHECK_BYTES
    # Leave claim-checked payloads in the store until the node uses them (``Deferred``): for a
    # coordinator, whose inbox can hold many big updates at once. A node that decodes on its event
    # loop (a client) keeps the default: fetched in a worker thread on arrival.
    defer_references: bool = False

    async def encode(self, to: str, message: Message) -> bytes:
        (frame,) = await self.encode_many([(to, message)])
        return frame

    async def encode_many(self, items: Sequence[tuple[str, Message]]) -> list[bytes]:
        """One frame per (recipient, message). A payload object sent to several recipients (the
        global model in a round's TRAIN messages) is serialised, hashed and claim-checked once.
        Raises ``ProtocolError`` if a recipient has no signing key."""
        prepared: dict[int, tuple[bytes | None, PayloadDescriptor]] = {}  # by id(): items keeps them alive
        frames = []
        for to, message in items:
            key = self.signing_key(to)
            if key is None:
                raise ProtocolError(f"no signing key for recipient {to!r}")
            if message.payload is None:
                frames.append(wire.encode_frame(sign(message.envelope, key), None))
                continue
            big = _is_big(message)
            ready = prepared.get(id(message.payload))
            if ready is None:
                ready = prepared[id(message.payload)] = await _maybe_offload(self._prepare, message, big=big)
            frames.append(await _maybe_offload(self._frame, message, key, *ready, big=big and ready[1].ref is None))
        return frames

    def _prepare(self, message: Message) -> tuple[bytes | None, PayloadDescriptor]:
        p = message.payload
        if isinstance(p, Params) and self.artifacts is not None and p.nbytes > self.claim_check_bytes:
            # A big model goes to the store straight from its arrays, hashed on the way: no
            # serialised copy of it is ever made.
            ref, size = self.artifacts.put_parts(codec.encode_parts(p))
            return None, PayloadDescriptor(codec=codec.CODEC, nbytes=size, sha256=digest_of(ref), ref=ref)
        data = wire.payload_bytes(message)
        assert data is not None
        desc = wire.describe(data)
        if len(data) > self.claim_check_bytes:
            if self.artifacts is None:
                raise PayloadError(
                    f"payload of {len(data)} bytes is over the claim-check threshold and no artifact store is set"
                )
            desc = desc.model_copy(update={"ref": self.artifacts.put(data, digest=desc.sha256)})
        return data, desc

    def _frame(self, message: Message, key: bytes, data: bytes | None, desc: PayloadDescriptor) -> bytes:
        env = sign(message.envelope.model_copy(update={"payload": desc}), key)
        return wire.encode_frame(env, data)

    async def decode(self, frame: bytes) -> Message:
        env, payload = await _maybe_offload(
            wire.decode_frame, frame, big=len(frame) > _OFFLOAD_BYTES, max_bytes=self.max_message_bytes
        )
        self.verifier.verify(env)
        desc = env.payload
        if desc is not None and desc.ref is not None:
            if self.artifacts is None:
                raise PayloadError("message refers to the artifact store, but none is configured")
            if desc.nbytes > self.max_message_bytes:
                raise PayloadError(f"referenced payload of {desc.nbytes} bytes exceeds the limit")
            if self.defer_references:
                return Message(env, Deferred(desc.nbytes, functools.partial(_fetch, self.artifacts, desc)))
            return Message(env, await asyncio.to_thread(_fetch, self.artifacts, desc))
        return Message(env, payload)


def _fetch(artifacts: ArtifactStore, desc: PayloadDescriptor) -> bytes | memoryview:
    """The claim-checked bytes, refused unless they are exactly what the sender signed for."""
    assert desc.ref is not None
    data = artifacts.view(desc.ref)
    wire.verify_payload(data, desc)
    return data


def _is_big(message: Message) -> bool:
    p = message.payload
    n = p.nbytes if isinstance(p, Params | memoryview | Deferred) else len(p or b"")
    return n > _OFFLOAD_BYTES


async def _maybe_offload(fn: Callable[..., T], *args: Any, big: bool, **kwargs: Any) -> T:
    if big:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)
