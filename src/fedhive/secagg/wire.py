"""Secure aggregation's messages over a broker: how each travels in an existing message kind.

No kind is added or renamed (docs/architecture.md, "Wire protocol"). The node that runs the round
(coordinator or combiner) opens it with an ordinary TRAIN (the global model); every later step it
sends is a TRAIN without payload whose body names the step in ``secagg``; each client answers
with UPDATEs whose body names theirs. A round takes three exchanges after the TRAIN once every
client it selected has advertised its keys ahead (with its last masked input, ``next_keys``):

    node -> client   TRAIN  secagg_roster=...    the model, and every id, the graph seed, k, t,
                                                 its neighbours' keys (those they advertised ahead)
    client -> node   UPDATE secagg="shares"      its shares for each neighbour, AES-GCM-sealed to them,
                                                 and its round's pair seeds sealed under its escrow key
    node -> client   TRAIN  secagg="routed"      the ciphertexts its neighbours sealed for it
    client -> node   UPDATE secagg="masked"      payload: the masked update (int64 bits of uint64);
                                                 body: its example count, its keys for its next round
    node -> client   TRAIN  secagg="unmask"      who of its neighbours is in the sum, who dropped
    client -> node   UPDATE secagg="unmask"      the shares asked for

Otherwise (a session's first round; a client that sent no masked input last time, or is new) the
round starts with a keys exchange first, and the roster follows in a TRAIN of its own:

    node -> client   TRAIN                       the model (the round starts: keys, then training)
    client -> node   UPDATE secagg="keys"        two X25519 public keys
    node -> client   TRAIN  secagg="roster"      every id, the graph seed, k, t, its neighbours' keys

Bytes travel as base64; a field that does not decode, or has the wrong length, is one
``ProtocolError`` line. Everything is signed per sender like any message (``core.signing``); the
sealed shares are opened only by the client they are sealed to.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints

from fedhive.core.bodies import MAX_CLIENTS, Attempt, Body, Examples, NodeId, TrainBody, parse_body
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params, ParamSpec, TensorSpec
from fedhive.errors import ProtocolError
from fedhive.secagg import masks, shamir
from fedhive.secagg.messages import AdvertiseKeys, Roster, ShareKeys, UnmaskRequest, UnmaskShares

MASKED = "masked"  # the one tensor of a masked input's payload
# What the masks and keys are made of (``secagg.masks``). Nodes of different versions would sum
# garbage without noticing (a client's masks and the server's removal of them must match), so
# the roster and every client's shares say theirs, and the other side refuses any other in one
# line. 1: what sent no version (AES-256-CTR masks, a share key per round); 2: AES-128-CTR masks,
# a share key per session.
VERSION = 2
_Version = Annotated[int, Field(ge=1, le=1_000)]
_B64 = Annotated[str, StringConstraints(max_length=256)]
# One 32-byte seed per neighbour (at most every other client) and a tag, in base64.
_Escrow = Annotated[str, StringConstraints(max_length=4 * (masks.escrow_bytes(MAX_CLIENTS) // 3 + 1))]
_Ids = Annotated[list[NodeId], Field(max_length=MAX_CLIENTS)]
_ById = Annotated[dict[NodeId, _B64], Field(max_length=MAX_CLIENTS)]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _bytes(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"secure aggregation: {what} is not base64") from None
    if len(raw) != length:
        raise ProtocolError(f"secure aggregation: {what} has {len(raw)} bytes, not {length}")
    return raw


def _same_version(theirs: int, whose: str) -> None:
    if theirs != VERSION:
        raise ProtocolError(
            f"secure aggregation: {whose} makes masks of version {theirs}, this one of version {VERSION}: "
            "every node of a secure session needs the same fedhive"
        )


def stage_of(msg: Message) -> str | None:
    """The step a TRAIN or UPDATE names (None: an ordinary one)."""
    v = msg.envelope.body.get("secagg")
    return v if isinstance(v, str) else None


# -- client -> node ------------------------------------------------------------------------------
class KeysBody(Body):
    kind = Kind.UPDATE
    secagg: Literal["keys"]
    attempt: Attempt = 0
    c: _B64
    s: _B64


class SharesBody(Body):
    kind = Kind.UPDATE
    secagg: Literal["shares"]
    attempt: Attempt = 0
    sealed: _ById
    escrow: _Escrow  # its round's pair seeds, sealed under its escrow key (opened only if it drops)
    version: _Version = 1


class MaskedBody(Body):
    kind = Kind.UPDATE
    secagg: Literal["masked"]
    attempt: Attempt = 0
    num_examples: Examples  # not secret: the coordinator knows it from registration (threat model)
    next_keys: tuple[_B64, _B64] | None = None  # (c, s) public keys for this client's next round


class UnmaskSharesBody(Body):
    kind = Kind.UPDATE
    secagg: Literal["unmask"]
    attempt: Attempt = 0
    self_mask: _ById
    mask_key: _ById


def keys_body(attempt: int, msg: AdvertiseKeys) -> dict[str, Any]:
    return {"secagg": "keys", "attempt": attempt, "c": _b64(msg.c_public), "s": _b64(msg.s_public)}


def read_keys(msg: Message) -> AdvertiseKeys:
    b = parse_body(KeysBody, msg)
    return AdvertiseKeys(msg.sender, _bytes(b.c, 32, "a public key"), _bytes(b.s, 32, "a public key"))


def shares_body(attempt: int, msg: ShareKeys) -> dict[str, Any]:
    sealed = {v: _b64(c) for v, c in msg.sealed.items()}
    return {"secagg": "shares", "attempt": attempt, "sealed": sealed, "escrow": _b64(msg.escrow), "version": VERSION}


def read_shares(msg: Message) -> ShareKeys:
    b = parse_body(SharesBody, msg)
    _same_version(b.version, f"{msg.sender}'s fedhive")
    sealed = {v: _bytes(c, masks.SEALED_BYTES, "a sealed share") for v, c in b.sealed.items()}
    return ShareKeys(msg.sender, sealed, _bytes(b.escrow, masks.escrow_bytes(len(sealed)), "the escrowed seeds"))


def masked_body(attempt: int, num_examples: int, next_keys: AdvertiseKeys | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"secagg": "masked", "attempt": attempt, "num_examples": num_examples}
    if next_keys is not None:
        body["next_keys"] = (_b64(next_keys.c_public), _b64(next_keys.s_public))
    return body


def read_next_keys(msg: Message) -> AdvertiseKeys | None:
    """The keys a masked input advertises for its sender's next round (None: it advertises none)."""
    keys = parse_body(MaskedBody, msg).next_keys
    if keys is None:
        return None
    return AdvertiseKeys(msg.sender, _bytes(keys[0], 32, "a public key"), _bytes(keys[1], 32, "a public key"))


def masked_payload(vector: np.ndarray) -> Params:
    """The ``uint64`` vector's bits as ``int64`` (safetensors' tag for them: no codec change)."""
    return Params({MASKED: vector.view(np.int64)})


def masked_spec(length: int) -> ParamSpec:
    return ParamSpec((TensorSpec(MASKED, (length,), "int64"),))


def unmask_shares_body(attempt: int, msg: UnmaskShares) -> dict[str, Any]:
    def rows(shares: Mapping[str, int]) -> dict[str, str]:
        return {u: _b64(shamir.to_bytes(y)) for u, y in shares.items()}

    return {"secagg": "unmask", "attempt": attempt, "self_mask": rows(msg.self_mask), "mask_key": rows(msg.mask_key)}


def read_unmask_shares(msg: Message) -> UnmaskShares:
    b = parse_body(UnmaskSharesBody, msg)

    def rows(shares: Mapping[str, str]) -> dict[str, int]:
        try:
            return {u: shamir.from_bytes(_bytes(y, shamir.SHARE_BYTES, "a share")) for u, y in shares.items()}
        except ValueError as exc:
            raise ProtocolError(f"secure aggregation: {exc}") from None

    return UnmaskShares(msg.sender, rows(b.self_mask), rows(b.mask_key))


# -- node -> client ------------------------------------------------------------------------------
class RosterBody(Body):
    kind = Kind.TRAIN
    secagg: Literal["roster"]
    attempt: Attempt = 0
    members: _Ids
    keys: Annotated[dict[NodeId, tuple[_B64, _B64]], Field(max_length=MAX_CLIENTS)]
    threshold: Annotated[int, Field(ge=2, le=MAX_CLIENTS)]
    neighbours: Annotated[int, Field(ge=1, le=MAX_CLIENTS)]
    graph_seed: _B64
    version: _Version = 1


class RoutedBody(Body):
    kind = Kind.TRAIN
    secagg: Literal["routed"]
    attempt: Attempt = 0
    routed: _ById


class UnmaskRequestBody(Body):
    kind = Kind.TRAIN
    secagg: Literal["unmask"]
    attempt: Attempt = 0
    survivors: _Ids
    dropped: _Ids


def roster_body(attempt: int, roster: Roster) -> dict[str, Any]:
    return {
        "secagg": "roster",
        "attempt": attempt,
        "members": list(roster.ids),
        "keys": {c: (_b64(cp), _b64(sp)) for c, (cp, sp) in roster.keys.items()},
        "threshold": roster.threshold,
        "neighbours": roster.neighbours,
        "graph_seed": _b64(roster.graph_seed),
        "version": VERSION,
    }


class SecureTrainBody(TrainBody):
    """A TRAIN that opens a round whose keys were advertised ahead: it carries the roster."""

    secagg_roster: dict[str, Any] | None = None  # ``roster_body``'s fields (not ``secagg``: see ``stage_of``)


class _RosterInTrain(Body):
    kind = Kind.TRAIN
    attempt: Attempt = 0
    secagg_roster: RosterBody | None = None


def train_with_roster(body: TrainBody, attempt: int, roster: Roster) -> TrainBody:
    """``body`` (a round's TRAIN) carrying ``roster``: the client shares its keys at once."""
    given = {name: getattr(body, name) for name in body.model_fields_set}
    return SecureTrainBody.model_construct(**given, secagg_roster=roster_body(attempt, roster))


def roster_in_train(msg: Message) -> Roster | None:
    """The roster a round's TRAIN carries (None: it carries none; the client advertises keys)."""
    b = parse_body(_RosterInTrain, msg)
    if b.secagg_roster is None:
        return None
    if b.secagg_roster.attempt != b.attempt:
        raise ProtocolError("secure aggregation: the TRAIN's roster is for another attempt")
    return _roster(b.secagg_roster)


def read_roster(msg: Message) -> Roster:
    return _roster(parse_body(RosterBody, msg))


def _roster(b: RosterBody) -> Roster:
    _same_version(b.version, "the node's fedhive")
    if len(set(b.members)) != len(b.members) or not b.keys.keys() <= set(b.members):
        raise ProtocolError("secure aggregation: the roster's members repeat, or its keys name others")
    keys = {c: (_bytes(cp, 32, "a public key"), _bytes(sp, 32, "a public key")) for c, (cp, sp) in b.keys.items()}
    seed = _bytes(b.graph_seed, 32, "the graph seed")
    return Roster(keys, b.threshold, b.neighbours, seed, members=tuple(b.members))


def routed_body(attempt: int, routed: Mapping[str, bytes]) -> dict[str, Any]:
    return {"secagg": "routed", "attempt": attempt, "routed": {u: _b64(c) for u, c in routed.items()}}


def read_routed(msg: Message) -> dict[str, bytes]:
    b = parse_body(RoutedBody, msg)
    return {u: _bytes(c, masks.SEALED_BYTES, "a sealed share") for u, c in b.routed.items()}


def unmask_request_body(attempt: int, request: UnmaskRequest) -> dict[str, Any]:
    return {
        "secagg": "unmask",
        "attempt": attempt,
        "survivors": sorted(request.survivors),
        "dropped": sorted(request.dropped),
    }


def read_unmask_request(msg: Message) -> UnmaskRequest:
    b = parse_body(UnmaskRequestBody, msg)
    return UnmaskRequest(frozenset(b.survivors), frozenset(b.dropped))
