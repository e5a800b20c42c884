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
from fedhive.core.envelope import Deferred, Envelope, Kind, Message, PayloadDescriptor
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import ConfigError, PayloadError, ProtocolError, StorageError
from fedhive.storage.artifacts import ArtifactStore, PresigningStore, check_area, digest_of, ref_for
from fedhive.transports import claim_urls
from fedhive.transports.claim_grants import (
    CLAIM_KEY,
    PAYLOAD_URL,
    UPLOAD_KEY,
    UPLOAD_URL,
    ClaimLedger,
    Fetch,
    Grant,
)

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
    # as soon as their receiver is done with them (``Deferred.discard``). Presigned URLs and
    # upload grants this node hands out last as long.
    retain_own_claims_s: float = 3600.0
    # A node that runs rounds (coordinator, combiner) with a store that presigns (S3): every
    # claim-checked payload it sends carries a GET URL, every TRAIN a PUT URL for the answer, and
    # an answer's claim is accepted only under a key issued to its sender.
    grants_uploads: bool = False

    def __post_init__(self) -> None:
        # Claim checks live apart from models and data sets (a sub-store): they are transient, and
        # recycling one must never touch a stored model that happens to have the same bytes.
        self._set_claims(claims_store(self.artifacts) if self.artifacts is not None else None)
        self._own: dict[str, float] = {}  # ref -> when we last put it
        self._own_lock = threading.Lock()
        self._ledger = ClaimLedger()

    def _set_claims(self, claims: ArtifactStore | None) -> None:
        self._claims = claims
        # Decided once per store: ``isinstance`` against a runtime-checkable Protocol walks its
        # members (7 us), and a coordinator asked twice for each of a round's 100 TRAIN messages.
        self._presigning: PresigningStore | None = claims if isinstance(claims, PresigningStore) else None

    @property
    def _presigner(self) -> PresigningStore | None:
        return self._presigning if self.grants_uploads else None

    def bind_namespace(self, namespace: str) -> None:
        """Keep claim checks per deployment namespace: the nodes of one namespace share them, and
        nothing one deployment recycles can be a payload another is still reading."""
        if self.artifacts is not None:
            self._set_claims(claims_store(self.artifacts, namespace))

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
            extra = self._grant_for(to, message)
            if message.payload is None:
                frames.append(wire.encode_frame(sign(_with_body(message.envelope, extra), key), None))
                continue
            big = _is_big(message)
            grant = self._ledger.take(to, message.envelope)  # an answer to a node that granted a URL
            ready: tuple[bytes | None, PayloadDescriptor] | None
            if grant is not None:
                ready = await _maybe_offload(self._prepare, message, grant, big=big)
                extra = {**extra, CLAIM_KEY: grant.key} if ready[1].ref is not None else extra
            else:
                ready = prepared.get(id(message.payload))
                if ready is None:
                    ready = prepared[id(message.payload)] = await _maybe_offload(self._prepare, message, big=big)
                extra = {**extra, **self._payload_url(ready[1])}
            frames.append(
                await _maybe_offload(self._frame, message, key, *ready, extra, big=big and ready[1].ref is None)
            )
        return frames

    def _grant_for(self, to: str, message: Message) -> dict[str, str]:
        """A TRAIN's PUT URL: where ``to`` writes its answer, a key nobody else is given."""
        presigner = self._presigner
        if presigner is None or message.kind is not Kind.TRAIN:
            return {}
        key = presigner.upload_key(to, message.envelope.round)
        url = presigner.presign_put(key, self.retain_own_claims_s)
        self._ledger.issue(to, key, self.retain_own_claims_s)
        return {UPLOAD_URL: url, UPLOAD_KEY: key}

    def _payload_url(self, desc: PayloadDescriptor) -> dict[str, str]:
        presigner = self._presigner
        if presigner is None or desc.ref is None:
            return {}
        return {PAYLOAD_URL: presigner.presign_get(desc.ref, self.retain_own_claims_s)}

    def _prepare(self, message: Message, grant: Grant | None = None) -> tuple[bytes | None, PayloadDescriptor]:
        p = message.payload
        if isinstance(p, Params) and p.nbytes > self.claim_check_bytes and (grant or self._claims) is not None:
            # A big model goes to the store straight from its arrays, hashed on the way: no
            # serialised copy of it is ever made (but for a URL upload, which needs one buffer).
            if grant is not None:
                sha, size = grant.upload(codec.encode_parts(p))
                return None, PayloadDescriptor(codec=codec.CODEC, nbytes=size, sha256=sha, ref=ref_for(sha))
            assert self._claims is not None
            ref, size = self._claims.put_parts(codec.encode_parts(p))
            self._remember(ref)
            return None, PayloadDescriptor(codec=codec.CODEC, nbytes=size, sha256=digest_of(ref), ref=ref)
        data = wire.payload_bytes(message)
        assert data is not None
        desc = wire.describe(data)
        if len(data) > self.claim_check_bytes:
            if grant is not None:
                grant.upload([data])
                return None, desc.model_copy(update={"ref": ref_for(desc.sha256)})
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
                self._claims.delete(r)  # deleted, not recycled: a slow reader may still be fetching it
            except StorageError as exc:
                log.warning("could not delete an old claim-checked payload: %s", exc)

    def _frame(
        self, message: Message, key: bytes, data: bytes | None, desc: PayloadDescriptor, extra: dict[str, str]
    ) -> bytes:
        env = sign(_with_body(message.envelope, extra).model_copy(update={"payload": desc}), key)
        return wire.encode_frame(env, data)

    async def decode(self, frame: bytes) -> Message:
        env, payload = await _maybe_offload(
            wire.decode_frame, frame, big=len(frame) > _OFFLOAD_BYTES, max_bytes=self.max_message_bytes
        )
        self.verifier.verify(env)  # from here on, env.sender and every body field are authentic
        self._ledger.offered(env)
        desc = env.payload
        if desc is None or desc.ref is None:
            return Message(env, payload)
        if desc.nbytes > self.max_message_bytes:
            raise PayloadError(f"referenced payload of {desc.nbytes} bytes exceeds the limit")
        fetch, discard = self._claim_of(env, desc)
        if self.defer_references:
            return Message(env, Deferred(desc.nbytes, functools.partial(_verified, fetch, desc), discard))
        return Message(env, await _fetch_shared(fetch, desc))

    def _claim_of(self, env: Envelope, desc: PayloadDescriptor) -> tuple[Fetch, Callable[[], None] | None]:
        """How to read a message's claim-checked payload, and how to give it back once used: only
        ever a claim its sender wrote (docs/networked.md, "Claim checks")."""
        assert desc.ref is not None
        limit = self.max_message_bytes
        key = env.body.get(CLAIM_KEY)
        if key is not None:  # written through a PUT URL we issued
            presigner = self._presigner
            if presigner is None or not isinstance(key, str) or not self._ledger.redeem(env.sender, key):
                raise ProtocolError(f"{env.sender} names a claim-check key that was not issued to it")
            return functools.partial(presigner.read_key, key, max_bytes=limit), functools.partial(
                _quietly, presigner.delete_key, key
            )
        url = env.body.get(PAYLOAD_URL)
        if isinstance(url, str) and not self.grants_uploads:  # a node without store credentials
            return functools.partial(claim_urls.download, url, max_bytes=limit), None
        if self._claims is None:
            raise PayloadError("message refers to the artifact store, but none is configured")
        fetch = functools.partial(self._claims.get, desc.ref)
        if not self.defer_references or self._presigner is not None:
            # Nothing to give back: a client's copy of a broadcast is the sender's to delete, and
            # with URLs (S3) a content-addressed object can only be one that we or our peers wrote.
            return fetch, None
        self._ledger.claim(env.sender, desc.ref, self.retain_own_claims_s)  # raises if another sender holds this claim
        return fetch, functools.partial(self._discard, env.sender, desc.ref)

    def _discard(self, sender: str, ref: str) -> None:
        """A received payload is used up: its space goes back to the store, unless the bytes are
        also one of our own payloads (an update identical to the global model we sent)."""
        assert self._claims is not None
        if not self._ledger.release(sender, ref):
            return
        with self._own_lock:
            if ref in self._own:
                return
        _quietly(self._claims.recycle, ref)


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
_IN_FLIGHT: dict[tuple[str, str, int], asyncio.Task[bytes]] = {}


async def _fetch_shared(fetch: Fetch, desc: PayloadDescriptor) -> bytes:
    """``_verified`` in a worker thread, shared by concurrent receivers of the same payload.

    Why: the virtual clients of one process (``fedhive client --virtual N``) all receive the same
    global model by reference at the same moment, and hashing 100 MB once per client was a third
    of such a process's round. They share one private copy, verified once: the bytes are
    immutable and this process's own, so what was checked is what every one of them decodes.
    Only successes are shared, and only while the fetch is running (no cache that could outlive
    the claim): a receiver whose sharer failed fetches on its own, since its store or URL may
    serve what the other's did not."""
    assert desc.ref is not None
    key = (desc.ref, desc.sha256, desc.nbytes)
    running = _IN_FLIGHT.get(key)
    if running is not None and running.get_loop() is asyncio.get_running_loop():
        try:
            return await asyncio.shield(running)
        except (PayloadError, StorageError):
            pass
    task = asyncio.ensure_future(asyncio.to_thread(_verified, fetch, desc))
    _IN_FLIGHT[key] = task
    task.add_done_callback(functools.partial(_fetched, key))
    return await asyncio.shield(task)


def _fetched(key: tuple[str, str, int], task: asyncio.Task[bytes]) -> None:
    if _IN_FLIGHT.get(key) is task:
        del _IN_FLIGHT[key]
    if not task.cancelled():
        task.exception()  # retrieved here: its receivers may all have been cancelled meanwhile


def _verified(fetch: Fetch, desc: PayloadDescriptor) -> bytes:
    """The claim-checked bytes, refused unless they are exactly what the sender signed for. The
    digest is checked on the very bytes returned (immutable, in this process's memory), never on
    a file or a memory map that could change between the check and the decoding."""
    data = fetch()
    if not isinstance(data, bytes):
        raise StorageError("the artifact store returned something other than a private copy of the payload")
    wire.verify_payload(data, desc)
    return data


def _with_body(env: Envelope, extra: dict[str, str]) -> Envelope:
    return env.model_copy(update={"body": {**env.body, **extra}}) if extra else env


def _quietly(give_back: Callable[[str], None], name: str) -> None:
    try:
        give_back(name)
    except StorageError as exc:  # costs store space, never the session
        log.warning("could not give a claim-checked payload back to the store: %s", exc)


def _is_big(message: Message) -> bool:
    p = message.payload
    n = p.nbytes if isinstance(p, Params | memoryview | Deferred) else len(p or b"")
    return n > _OFFLOAD_BYTES


async def _maybe_offload(fn: Callable[..., T], *args: Any, big: bool, **kwargs: Any) -> T:
    if big:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)
