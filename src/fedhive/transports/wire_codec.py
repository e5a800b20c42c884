"""Messages <-> signed frames, shared by every transport that leaves the process.

Encoding serialises ``Params`` once, hashes once, moves payloads above the claim-check threshold
to the artifact store, and signs. Decoding checks size, schema, signature, replay and digest
before the payload can reach a node. Payloads of more than 1 MiB are hashed and (de)serialised in
a worker thread so a large model never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fedhive.core import codec, wire
from fedhive.core.envelope import Deferred, Message, PayloadDescriptor
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import ConfigError, PayloadError, ProtocolError, StorageError
from fedhive.storage.artifacts import ArtifactStore, check_area, digest_of

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_CLAIM_CHECK_BYTES = 8 * 1024 * 1024
CLAIMS_AREA = "claims"  # the artifact store's sub-store for claim-checked payloads
_OFFLOAD_BYTES = 1024 * 1024

log = logging.getLogger("fedhive.wire")

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
    # Broadcast payloads this node put in the store are deleted once unused for this long (a round's
    # global model: every client fetches it when its TRAIN arrives). Updates go back to the store
    # as soon as their receiver is done with them (``Deferred.discard``).
    retain_own_claims_s: float = 3600.0

    def __post_init__(self) -> None:
        # Claim checks live apart from models and data sets (a sub-store): they are transient, and
        # recycling one must never touch a stored model that happens to have the same bytes.
        self._claims = claims_store(self.artifacts) if self.artifacts is not None else None
        self._own: dict[str, float] = {}  # ref -> when we last put it
        self._own_lock = threading.Lock()

    def bind_namespace(self, namespace: str) -> None:
        """Keep claim checks per deployment namespace: the nodes of one namespace share them, and
        nothing one deployment recycles can be a payload another is still reading."""
        if self.artifacts is not None:
            self._claims = claims_store(self.artifacts, namespace)

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
        if isinstance(p, Params) and self._claims is not None and p.nbytes > self.claim_check_bytes:
            # A big model goes to the store straight from its arrays, hashed on the way: no
            # serialised copy of it is ever made.
            ref, size = self._claims.put_parts(codec.encode_parts(p))
            self._remember(ref)
            return None, PayloadDescriptor(codec=codec.CODEC, nbytes=size, sha256=digest_of(ref), ref=ref)
        data = wire.payload_bytes(message)
        assert data is not None
        desc = wire.describe(data)
        if len(data) > self.claim_check_bytes:
            if self._claims is None:
                raise PayloadError(
                    f"payload of {len(data)} bytes is over the claim-check threshold and no artifact store is set"
                )
            ref = self._claims.put(data, digest=desc.sha256)
            self._remember(ref)
            desc = desc.model_copy(update={"ref": ref})
        return data, desc

    def sweep_stale_claims(self) -> int:
        """Delete claim checks of this namespace older than ``retain_own_claims_s`` (blocking):
        what a crashed process left behind, which nobody would give back otherwise. For a node
        that owns the namespace's rounds (a coordinator), when it starts."""
        return self._claims.sweep(self.retain_own_claims_s) if self._claims is not None else 0

    def _remember(self, ref: str) -> None:
        """Note a payload we put, and delete our payloads unused for ``retain_own_claims_s``."""
        assert self._claims is not None
        now = time.monotonic()
        with self._own_lock:
            self._own[ref] = now
            stale = [r for r, t in self._own.items() if now - t > self.retain_own_claims_s]
            for r in stale:
                del self._own[r]
        for r in stale:
            try:
                self._claims.delete(r)  # deleted, not recycled: a slow reader may still map it
            except StorageError as exc:
                log.warning("could not delete an old claim-checked payload: %s", exc)

    def _discard(self, desc: PayloadDescriptor) -> None:
        """A received payload is used up: its space goes back to the store, unless the bytes are
        also one of our own payloads (an update identical to the global model we sent)."""
        assert self._claims is not None and desc.ref is not None
        with self._own_lock:
            if desc.ref in self._own:
                return
        try:
            self._claims.recycle(desc.ref)
        except StorageError as exc:
            log.warning("could not recycle a claim-checked payload: %s", exc)

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
            if self._claims is None:
                raise PayloadError("message refers to the artifact store, but none is configured")
            if desc.nbytes > self.max_message_bytes:
                raise PayloadError(f"referenced payload of {desc.nbytes} bytes exceeds the limit")
            if self.defer_references:
                load = functools.partial(_fetch, self._claims, desc)
                return Message(env, Deferred(desc.nbytes, load, functools.partial(self._discard, desc)))
            return Message(env, await _fetch_shared(self._claims, desc))
        return Message(env, payload)


def claims_store(artifacts: ArtifactStore, namespace: str | None = None) -> ArtifactStore:
    """Where claim-checked payloads of a namespace's nodes live in ``artifacts``."""
    claims = artifacts.scoped(CLAIMS_AREA)
    return claims if namespace is None else claims.scoped(_area_name(namespace))


def _area_name(namespace: str) -> str:
    try:
        return check_area(namespace)
    except ConfigError:  # a namespace the broker accepts but a directory or key prefix would not
        return "ns-" + hashlib.sha256(namespace.encode()).hexdigest()[:16]


# Claim-checked payloads being fetched and verified in this process, by (ref, sha256, size).
_IN_FLIGHT: dict[tuple[str, str, int], asyncio.Task[bytes | memoryview]] = {}


async def _fetch_shared(artifacts: ArtifactStore, desc: PayloadDescriptor) -> bytes | memoryview:
    """``_fetch`` in a worker thread, shared by concurrent receivers of the same payload.

    Why: the virtual clients of one process (``fedhive client --virtual N``) all receive the same
    global model by reference at the same moment, and hashing 100 MB once per client was a third
    of such a process's round. Only successes are shared, and only while the fetch is running
    (no cache that could outlive the file): a receiver whose sharer failed fetches on its own,
    since its store may hold what the other's did not."""
    assert desc.ref is not None
    key = (desc.ref, desc.sha256, desc.nbytes)
    running = _IN_FLIGHT.get(key)
    if running is not None and running.get_loop() is asyncio.get_running_loop():
        try:
            return await asyncio.shield(running)
        except (PayloadError, StorageError):
            pass
    task = asyncio.ensure_future(asyncio.to_thread(_fetch, artifacts, desc))
    _IN_FLIGHT[key] = task
    task.add_done_callback(functools.partial(_fetched, key))
    return await asyncio.shield(task)


def _fetched(key: tuple[str, str, int], task: asyncio.Task[bytes | memoryview]) -> None:
    if _IN_FLIGHT.get(key) is task:
        del _IN_FLIGHT[key]
    if not task.cancelled():
        task.exception()  # retrieved here: its receivers may all have been cancelled meanwhile


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
