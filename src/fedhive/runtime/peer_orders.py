"""What ``fedhive serve`` and a site agent say to each other about a decentralised session.

The server only starts such a session and watches it; the peers train and aggregate among
themselves over the broker (``runtime.peer``). Three messages, all on the agent's own signed
channel with the server (the hub signs and checks them with the site's secret):

- the order (server -> agent): an ``enable`` whose body names ``topology: decentralised``, the
  session's settings, the agent's peer id, the session's peer ids, and the session's federation
  key sealed for this agent (``seal_key``);
- progress (agent -> server): a ``peer_update`` of type ``progress`` without payload, one per
  round the agent's peer completed: the committed model's digest, the peers in the round, and the
  agent's own training figures; type ``done`` after its last round;
- failure (agent -> server): an ``error`` naming why its peer could not go on;
- after a restart of the server, a resume order (server -> agent): an ``enable`` naming
  ``topology: decentralised`` and ``resume: true`` (``resume_message``). An agent whose peer of that
  session still runs, or has finished, repeats its reports (fresh messages: the restarted server
  may have lost them, and refuses what was signed before it started); any other agent answers
  with a failure: the server never holds the session's model or key, so a peer that is gone
  cannot be started again mid-session.

Why the key is sealed: a federation key signs every broadcast of the session, so whoever reads it
can speak for any peer. It travels only to the selected agents, each copy encrypted (AES-256-GCM)
under a key derived from that site's own secret, with the session and site ids as associated data:
the broker, and anyone reading the agent's queue, see ciphertext only. docs/networked.md,
"Sessions of every topology from serve", states the trust this asks for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from fedhive.core.bodies import ErrorBody, PeerUpdateBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import ProtocolError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.session_config import SessionConfig

DECENTRALISED = "decentralised"
KEY_BYTES = 32
_NONCE_BYTES = 12
_INFO = b"fedhive federation key v1"
PROGRESS = "progress"
DONE = "done"


def _wrapping_key(site_secret: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(site_secret))


def seal_key(federation_key: bytes, site_secret: bytes, *, session_id: str, site_id: str) -> str:
    """``federation_key`` encrypted for one site (hex): only that site's secret opens it."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _wrapping_key(site_secret).encrypt(nonce, federation_key, f"{session_id}|{site_id}".encode())
    return (nonce + sealed).hex()


def open_key(sealed: str, site_secret: bytes, *, session_id: str, site_id: str) -> bytes:
    try:
        raw = bytes.fromhex(sealed)
        key = _wrapping_key(site_secret).decrypt(
            raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], f"{session_id}|{site_id}".encode()
        )
    except (ValueError, InvalidTag):
        raise ProtocolError(f"session {session_id}: the federation key was not sealed for {site_id}") from None
    if len(key) != KEY_BYTES:
        raise ProtocolError(f"session {session_id}: the federation key has {len(key)} bytes, not {KEY_BYTES}")
    return key


@dataclass(frozen=True)
class PeerOrder:
    """One agent's part in a decentralised session."""

    config: SessionConfig
    peer_id: str
    peers: list[str]  # every peer id of the session, this one's included
    sealed_key: str
    beat_s: float = 1.0
    peer_timeout_s: float = 5.0

    @property
    def session_id(self) -> str:
        return self.config.session_id

    @property
    def topic(self) -> str:
        return f"peers.{self.config.session_id}"  # one broadcast topic per session: sessions never mix

    @property
    def seed_index(self) -> int:
        return sorted(self.peers).index(self.peer_id)

    def message(self) -> Message:
        body: dict[str, Any] = {
            "topology": DECENTRALISED,
            "config": self.config.model_dump(mode="json"),
            "spec": [],
            "peer_id": self.peer_id,
            "peers": list(self.peers),
            "key": self.sealed_key,
            "beat_s": self.beat_s,
            "peer_timeout_s": self.peer_timeout_s,
        }
        return make(Kind.ENABLE, COORDINATOR_ID, session_id=self.session_id, body=body)

    @classmethod
    def read(cls, msg: Message) -> PeerOrder | None:
        """The order a message from the server holds, or None if it holds none."""
        body = msg.envelope.body
        if msg.kind is not Kind.ENABLE or body.get("topology") != DECENTRALISED or is_resume(msg):
            return None
        try:
            config = SessionConfig.model_validate(body.get("config"))
            peers = [str(p) for p in body["peers"]]
            order = cls(
                config,
                str(body["peer_id"]),
                peers,
                str(body["key"]),
                float(body.get("beat_s", 1.0)),
                float(body.get("peer_timeout_s", 5.0)),
            )
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed decentralised session order: {str(exc)[:200]}") from None
        if config.session_id != msg.envelope.session_id or order.peer_id not in peers:
            raise ProtocolError("malformed decentralised session order: its session or peer id does not match")
        if not 0 < order.beat_s < order.peer_timeout_s:
            raise ProtocolError("malformed decentralised session order: need 0 < beat_s < peer_timeout_s")
        return order


@dataclass(frozen=True)
class PeerProgress:
    """An agent's word on its peer: a round done (``progress``) or its last one (``done``)."""

    type: str
    round: int
    digest: str
    members: list[str]
    num_examples: int
    metrics: dict[str, float]

    def message(self, agent_id: str, session_id: str) -> Message:
        body = PeerUpdateBody.model_construct(
            type=self.type, num_examples=self.num_examples, metrics=dict(self.metrics), digest=self.digest,
            order=list(self.members),
        )  # fmt: skip
        return make(Kind.PEER_UPDATE, agent_id, session_id=session_id, round=self.round, body=body.to_body())

    @classmethod
    def read(cls, msg: Message) -> PeerProgress:
        body = parse_body(PeerUpdateBody, msg)
        if body.type not in (PROGRESS, DONE):
            raise ProtocolError(f"a peer's report of type {body.type!r}: expected {PROGRESS!r} or {DONE!r}")
        return cls(body.type, msg.envelope.round, body.digest or "", list(body.order), body.num_examples or 0,
                   dict(body.metrics))  # fmt: skip


def resume_message(session_id: str) -> Message:
    """The restarted server's question to an agent: does your peer of this session still run?"""
    body = {"topology": DECENTRALISED, "resume": True}
    return make(Kind.ENABLE, COORDINATOR_ID, session_id=session_id, body=body)


def is_resume(msg: Message) -> bool:
    body = msg.envelope.body
    return msg.kind is Kind.ENABLE and body.get("topology") == DECENTRALISED and body.get("resume") is True


def failure_message(agent_id: str, session_id: str, reason: str) -> Message:
    body = ErrorBody.model_construct(reason=reason[:500]).to_body()
    return make(Kind.ERROR, agent_id, session_id=session_id, body=body)
