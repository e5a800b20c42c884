"""How a wire body (``core.bodies``) is read off a message: validated once per message, a bad field
a one-line ``ProtocolError`` naming the kind and the field."""

from __future__ import annotations

import math
from typing import Annotated, TypeVar, cast

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from fedhive.core.body_fields import MAX_ATTEMPT
from fedhive.core.envelope import Kind, Message
from fedhive.errors import ProtocolError

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], msg: Message) -> M:
    """``msg``'s body as ``model``, validated on the first call for this message only."""
    cache = msg.parsed_bodies
    hit = cache.get(model)
    if hit is not None:
        return cast(M, hit)
    try:
        body = model.model_validate(msg.envelope.body)
    except ValidationError as exc:
        raise ProtocolError(_one_line(msg.kind, exc)) from None
    cache[model] = body
    return body


class Encoding(BaseModel):
    """The one field of an UPDATE or PEER_UPDATE that the payload's decoder reads: it is read
    on its own, as it always was, by whoever decodes a payload."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)
    compression: Annotated[str, StringConstraints(max_length=32)] | None = None


def compression_claimed(msg: Message) -> str | None:
    """The update encoding a message names (None: the update itself)."""
    return parse_body(Encoding, msg).compression


def attempt_claimed(msg: Message) -> int:
    """The attempt a message names, without judging the rest of its body: for the ERROR that
    answers a message which could not be read (0 when the field is missing or malformed)."""
    v = msg.envelope.body.get("attempt", 0)
    return v if type(v) is int and 0 <= v <= MAX_ATTEMPT else 0


def _one_line(kind: Kind, exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    what = str(first["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in first["loc"])
    if not where:
        return f"{kind.value} body: {what}"
    if first["type"] == "missing":
        return f"{kind.value} body: field {where!r} is required"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if isinstance(got, float) and not math.isfinite(got):
        shown = str(got)
    return f"{kind.value} body: field {where!r}: {what} (got {shown[:60]})"
