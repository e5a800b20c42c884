"""The wire envelope (docs/architecture.md, "Wire protocol") and the message that carries it inside a process."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedhive.core.params import Params

PROTOCOL_VERSION = 1


class Kind(StrEnum):
    """Message kinds. Extend, never rename: old peers must keep understanding new ones."""

    REGISTER = "register"
    REGISTERED = "registered"
    HEARTBEAT = "heartbeat"
    ENABLE = "enable"
    TRAIN = "train"
    UPDATE = "update"
    EVALUATE = "evaluate"
    EVALUATION = "evaluation"
    DONE = "done"
    STOP = "stop"
    ERROR = "error"
    PARTIAL = "partial"
    ANNOUNCE = "announce"
    PEER_UPDATE = "peer_update"


class PayloadDescriptor(BaseModel):
    """What follows the envelope: codec, exact length and digest, or a claim-check reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    codec: str = Field(max_length=32)
    nbytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ref: str | None = Field(default=None, max_length=512)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = PROTOCOL_VERSION
    kind: Kind
    msg_id: str = Field(default_factory=lambda: secrets.token_hex(16), max_length=64)
    session_id: str = Field(default="", max_length=128)
    round: int = Field(default=0, ge=0)
    sender: str = Field(max_length=128)
    sent_at: float = Field(default_factory=time.time)
    body: dict[str, Any] = Field(default_factory=dict)
    payload: PayloadDescriptor | None = None
    sig: str | None = Field(default=None, max_length=128)


class Deferred:
    """A payload not fetched yet: a claim check (docs/architecture.md, "Wire protocol") whose bytes stay in the
    artifact store until the node is ready to use them.

    Why: a coordinator's inbox may hold many updates at once (the broker delivers faster than it
    folds). Holding each as fetched bytes would cost one model copy per queued update; holding the
    reference costs nothing, and ``load`` (blocking: run it in a worker thread for big payloads)
    fetches the bytes and checks their digest when the update is folded, one at a time.
    """

    __slots__ = ("_discard", "_load", "nbytes")

    def __init__(
        self,
        nbytes: int,
        load: Callable[[], bytes | memoryview],
        discard: Callable[[], None] | None = None,
    ) -> None:
        self.nbytes = nbytes
        self._load = load
        self._discard = discard

    def load(self) -> bytes | memoryview:
        return self._load()

    def discard(self) -> None:
        """The receiver is done with these bytes (blocking: store I/O). Nothing that ``load``
        returned may be read afterwards: the store may reuse the space."""
        if self._discard is not None:
            self._discard()


Payload = Params | bytes | memoryview | Deferred


@dataclass(frozen=True, slots=True)
class Message:
    """An envelope plus its payload as the receiver gets it.

    In one process (memory transport) the payload is the sender's ``Params`` object itself: no
    serialisation, no copy. Off the wire it is the raw safetensors bytes; the receiving node, which
    knows the expected spec, decodes and validates them (``fedhive.core.messages.payload_params``).
    """

    envelope: Envelope
    payload: Payload | None = None
    # The body as each reader's model, validated once (``core.bodies.parse_body``): several readers
    # of one message (or every peer given one broadcast) share the check.
    parsed_bodies: dict[type, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def kind(self) -> Kind:
        return self.envelope.kind

    @property
    def sender(self) -> str:
        return self.envelope.sender


def make(
    kind: Kind,
    sender: str,
    *,
    session_id: str = "",
    round: int = 0,
    body: dict[str, Any] | None = None,
    payload: Payload | None = None,
) -> Message:
    """Build an outgoing message. The transport fills ``payload`` descriptor and ``sig`` on the wire.

    Built without re-validation: the arguments come from this process's own typed code, and every
    envelope that arrives from outside is validated in full by ``wire.decode_frame``.
    """
    env = Envelope.model_construct(
        v=PROTOCOL_VERSION,
        kind=kind,
        msg_id=secrets.token_hex(16),
        session_id=session_id,
        round=round,
        sender=sender,
        sent_at=time.time(),
        body=body or {},
        payload=None,
        sig=None,
    )
    return Message(env, payload)
