"""The body of each message kind: the one place where the wire's body keys are spelled and checked
(docs/architecture.md, "Wire protocol").

- Receivers read a body with ``parse_body(Model, msg)``: validated once per message (the result is
  kept on the message, so a second reader of the same message costs a dict lookup), and a bad
  field is a one-line ``ProtocolError`` naming the kind and the field.
- Senders build a body with ``Model.model_construct(...)`` and send ``.to_body()``: no validation
  (the values come from this process's own typed code), and only the fields given go on the wire,
  so the JSON keys are the ones nodes have always sent.
- Unknown keys are ignored: "extend, never rename", a new node may add a key that an old one then
  does not read. A new key therefore needs a default that means what its absence meant before.

Repeated rows (a partial's members, a host's clients) are ``TypedDict``s: pydantic checks them in
its compiled core and they stay plain dicts, about a microsecond per row where a model per row
would cost several on the simulation's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NotRequired, Self, TypeVar, cast

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic reads TypedDicts of typing_extensions on 3.11

from fedhive.core.envelope import Kind, Message
from fedhive.errors import ProtocolError

MAX_EXAMPLES = 10**9
MAX_CLIENTS = 10_000  # clients one partial, evaluation or host TRAIN may name
MAX_ATTEMPT = 10**6
MAX_ID = 128
MAX_REASON = 500
MAX_METRICS = 64
NO_MODEL = -1  # a peer that holds no model yet announces this

# -- field types ----------------------------------------------------------------------------------
# Strict: a bool or a string is no number on the wire (JSON gives ints and floats as they are).
Examples = Annotated[int, Strict(), Field(ge=1, le=MAX_EXAMPLES)]
ExamplesOrNone = Annotated[int, Strict(), Field(ge=0, le=MAX_EXAMPLES)]
ClientCount = Annotated[int, Strict(), Field(ge=0, le=MAX_CLIENTS)]
Attempt = Annotated[int, Strict(), Field(ge=0, le=MAX_ATTEMPT)]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**63 - 1)]
Finite = Annotated[float, Strict(), AllowInfNan(False)]
NodeId = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_ID)]
Digest = Annotated[str, Strict(), StringConstraints(max_length=128)]
MetricName = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=64)]
Metrics = Annotated[dict[MetricName, Finite], Field(max_length=MAX_METRICS)]
LabelCounts = Annotated[
    dict[Annotated[str, StringConstraints(max_length=MAX_ID)], Annotated[int, Strict(), Field(ge=0)]],
    Field(max_length=100_000),
]


def _text(limit: int) -> Any:
    """Free text (a reason), cut to ``limit``: a long reason is no reason to drop the message."""
    return BeforeValidator(lambda v: str(v)[:limit])


def _or_none(kind: type) -> Any:
    """A heartbeat's optional figure: kept if it is one, else None (a bad figure costs only itself)."""
    return BeforeValidator(lambda v: v if isinstance(v, kind) and not isinstance(v, bool) else None)


def _ids(v: object) -> list[str]:
    """Peer ids, order kept; malformed entries are dropped, as peers always have."""
    if not isinstance(v, list):
        return []
    return [p for p in v[:MAX_CLIENTS] if isinstance(p, str) and 0 < len(p) <= MAX_ID]


IdList = Annotated[list[str], BeforeValidator(_ids)]


# -- rows -----------------------------------------------------------------------------------------
class MemberRow(TypedDict):
    """One client's figures in a partial, an evaluation or a raw partial's ``updates``."""

    client: NodeId
    num_examples: Examples
    metrics: NotRequired[Metrics]


class FailureRow(TypedDict):
    client: NodeId
    reason: NotRequired[Annotated[str, _text(MAX_REASON)]]


class SeedRow(TypedDict):
    """One client of a host's TRAIN, with its own seed."""

    client: NodeId
    seed: Seed


@dataclass(frozen=True, slots=True)
class Member:
    """A client's figures as a node reads them from a ``MemberRow``."""

    client_id: str
    num_examples: int
    metrics: dict[str, float]


def member_rows(members: Iterable[Member]) -> list[MemberRow]:
    return [{"client": m.client_id, "num_examples": m.num_examples, "metrics": m.metrics} for m in members]


def failure_rows(failures: Iterable[tuple[str, str]]) -> list[FailureRow]:
    return [{"client": c, "reason": r[:MAX_REASON]} for c, r in failures]


def seed_rows(seeds: Iterable[tuple[str, int]]) -> list[SeedRow]:
    return [{"client": c, "seed": s} for c, s in seeds]


def _members(rows: Sequence[MemberRow]) -> list[Member]:
    return [Member(r["client"], r["num_examples"], r.get("metrics", {})) for r in rows]


# -- bodies ---------------------------------------------------------------------------------------
class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)
    kind: ClassVar[Kind]

    def to_body(self) -> dict[str, Any]:
        """The wire body: the fields that were given, in declaration order."""
        given = self.__pydantic_fields_set__
        return {k: v for k, v in self.__dict__.items() if k in given}


class RegisterBody(Body):
    """A client's registration (``host``: the ``ClientHost`` that answers for it, its own choice);
    a combiner's (``role`` combiner, its clients); or a client's request for a combiner (``role``
    client, a combiner to ``avoid``)."""

    kind = Kind.REGISTER
    role: Literal["client", "combiner"] | None = None
    num_examples: ExamplesOrNone | None = None
    label_counts: LabelCounts = {}
    host: NodeId | None = None
    clients: ClientCount | None = None
    avoid: NodeId | None = None
    site: dict[str, Any] | None = None  # a site agent's announcement (its site, apps, data sets)

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.role != "client" and self.num_examples is None:
            raise ValueError("field 'num_examples' is required")
        if self.role == "combiner" and self.clients is None:
            raise ValueError("field 'clients' is required of a combiner")
        return self


class RegisteredBody(Body):
    kind = Kind.REGISTERED
    heartbeat_interval_s: Annotated[float | None, _or_none(int | float)] = None
    # How long a silence from the registered node means the registrar gives it up: a combiner's
    # clients give the combiner up after as long, and ask for another (runtime.assigned_client).
    heartbeat_timeout_s: Annotated[float | None, _or_none(int | float)] = None
    combiner: NodeId | None = None  # the answer to a client's request for a combiner


class HeartbeatBody(Body):
    """Signs of life with what a node is doing; the figures are informative, so a bad one is
    dropped rather than the beat."""

    kind = Kind.HEARTBEAT
    status: Annotated[str, _text(32)] = ""
    epoch: Annotated[int | None, _or_none(int)] = None
    epochs: Annotated[int | None, _or_none(int)] = None
    loss: Annotated[float | None, _or_none(int | float)] = None
    accuracy: Annotated[float | None, _or_none(int | float)] = None
    clients: ClientCount | None = None  # a combiner's, so a restarted coordinator can take it back


class EnableBody(Body):
    """The session's configuration and model spec: their own types check them (``read_enable``)."""

    kind = Kind.ENABLE
    config: dict[str, Any] = {}
    spec: list[Any]


class TrainBody(Body):
    """The fit configuration and the app a TRAIN is for; to a host, each of its clients' seeds."""

    kind = Kind.TRAIN
    fit: dict[str, Any] = {}
    app: Annotated[str, StringConstraints(max_length=256)] | None = None
    app_digest: Digest | None = None
    attempt: Attempt = 0
    clients: Annotated[list[SeedRow], Field(min_length=1, max_length=MAX_CLIENTS)] | None = None

    def seeds(self) -> list[tuple[str, int]]:
        return [(row["client"], row["seed"]) for row in self.clients or ()]


class UpdateBody(Body):
    kind = Kind.UPDATE
    attempt: Attempt = 0
    num_examples: Examples
    metrics: Metrics = {}
    compression: Annotated[str, StringConstraints(max_length=32)] | None = None


class EvaluateBody(Body):
    kind = Kind.EVALUATE
    app: Annotated[str, StringConstraints(max_length=256)] | None = None
    app_digest: Digest | None = None
    clients: Annotated[list[NodeId], Field(max_length=MAX_CLIENTS)] | None = None  # to a host: whom


class _Members(Body):
    """Clients a node answers for: ``members`` with their figures, ``failures`` with reasons."""

    members: list[MemberRow] | None = None
    failures: list[FailureRow] = []

    @model_validator(mode="after")
    def _each_once(self) -> Self:
        named = [m["client"] for m in self.members or ()] + [f["client"] for f in self.failures]
        if len(named) > MAX_CLIENTS:
            raise ValueError(f"at most {MAX_CLIENTS} clients may be named")
        if len(set(named)) != len(named):
            raise ValueError("a client is named twice")
        return self

    def member_list(self) -> list[Member]:
        return _members(self.members or ())

    def failure_list(self) -> list[tuple[str, str]]:
        return [(f["client"], f.get("reason", "unspecified")) for f in self.failures]


class EvaluationBody(_Members):
    kind = Kind.EVALUATION


class PartialBody(_Members):
    """A combiner's or a host's answer (``runtime.partials``, ``runtime.hosted``): ``sum``
    (weighted sums, with their weights), ``raw`` (the updates themselves, one row each), or
    ``none`` (a host whose clients all failed; a combiner whose Poisson draw took none of its
    clients, ``runtime.partials.nobody_drawn_message``)."""

    kind = Kind.PARTIAL
    mode: Literal["sum", "raw", "none"]
    attempt: Attempt = 0
    exact: Annotated[bool, Strict()] = False
    total_weight: Annotated[Finite, Field(gt=0)] | None = None
    num_examples: Examples | None = None
    count: Annotated[int, Strict(), Field(ge=1, le=MAX_CLIENTS)] | None = None
    metric_sums: Metrics = {}
    metric_weight: Annotated[Finite, Field(ge=0)] | None = None
    clients: Annotated[list[NodeId], Field(max_length=MAX_CLIENTS)] = []
    updates: Annotated[list[MemberRow], Field(max_length=MAX_CLIENTS)] = []

    @model_validator(mode="after")
    def _by_mode(self) -> Self:
        if self.mode == "sum":
            for name in ("total_weight", "num_examples", "count", "metric_weight"):
                if getattr(self, name) is None:
                    raise ValueError(f"field {name!r} is required in mode 'sum'")
        if self.mode == "raw" and not self.updates:
            raise ValueError("field 'updates' must list 1 or more updates in mode 'raw'")
        return self

    def update_list(self) -> list[Member]:
        return _members(self.updates)


class DoneBody(Body):
    kind = Kind.DONE


class StopBody(Body):
    """``reason`` set: the session failed (a client ends with an error); absent: it is over."""

    kind = Kind.STOP
    reason: Annotated[str, _text(1000)] | None = None


class ErrorBody(Body):
    kind = Kind.ERROR
    reason: Annotated[str, _text(MAX_REASON)] = "unspecified"
    attempt: Attempt = 0


class AnnounceBody(Body):
    """A peer's ``hello``, ``beat`` (with the round of the model it holds), ``bye``, or a leader's
    ``commit`` of a round's update ``ids`` onto the model with digest ``base``."""

    kind = Kind.ANNOUNCE
    type: Annotated[str, StringConstraints(max_length=16)]
    have: Annotated[int, Strict(), Field(ge=NO_MODEL, le=MAX_EXAMPLES)] | None = None
    ids: IdList = []
    base: Digest | None = None

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.type in ("hello", "beat") and self.have is None:
            raise ValueError(f"field 'have' is required in a {self.type!r}")
        return self


class PeerUpdateBody(Body):
    """A peer's ``update`` (or ``gossip``): its trained model's figures; or a ``model`` handed
    over with its ``digest`` and the round's leader ``order``."""

    kind = Kind.PEER_UPDATE
    type: Annotated[str, StringConstraints(max_length=16)]
    num_examples: Examples | None = None
    metrics: Metrics = {}
    compression: Annotated[str, StringConstraints(max_length=32)] | None = None
    digest: Digest | None = None
    order: IdList = []

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.type in ("update", "gossip") and self.num_examples is None:
            raise ValueError(f"field 'num_examples' is required in a {self.type!r}")
        return self


BODIES: dict[Kind, type[Body]] = {
    m.kind: m
    for m in (
        RegisterBody,
        RegisteredBody,
        HeartbeatBody,
        EnableBody,
        TrainBody,
        UpdateBody,
        EvaluateBody,
        EvaluationBody,
        DoneBody,
        StopBody,
        ErrorBody,
        PartialBody,
        AnnounceBody,
        PeerUpdateBody,
    )
}


B = TypeVar("B", bound=Body)


# -- reading --------------------------------------------------------------------------------------
def parse_body(model: type[B], msg: Message) -> B:
    """``msg``'s body as ``model``, validated on the first call for this message only."""
    cache = msg.parsed_bodies
    hit = cache.get(model)
    if hit is not None:
        return cast(B, hit)
    try:
        body = model.model_validate(msg.envelope.body)
    except ValidationError as exc:
        raise ProtocolError(_one_line(msg.kind, exc)) from None
    cache[model] = body
    return body


def attempt_of(msg: Message) -> int:
    """The round attempt an UPDATE, PARTIAL or ERROR answers (0 where the kind has none)."""
    body = parse_body(BODIES[msg.kind], msg)
    return int(getattr(body, "attempt", 0))


class Encoding(Body):
    """The one field of an UPDATE or PEER_UPDATE that the payload's decoder reads: it is read
    on its own, as it always was, by whoever decodes a payload."""

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
