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

The field types live in ``body_fields``, the repeated rows in ``body_rows``, the reading of a body
off a message in ``body_reading``; this module holds the base class and each kind's body.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator

from fedhive.core.body_fields import (
    MAX_CLIENTS,
    MAX_EXAMPLES,
    MAX_REASON,
    NO_MODEL,
    Attempt,
    ClientCount,
    Digest,
    Examples,
    ExamplesOrNone,
    Finite,
    IdList,
    LabelCounts,
    Metrics,
    NodeId,
    figure_or_none,
    text_cut,
)
from fedhive.core.body_reading import attempt_claimed, compression_claimed, parse_body
from fedhive.core.body_rows import (
    FailureRow,
    Member,
    MemberRow,
    SeedRow,
    failure_rows,
    member_rows,
    members_of,
    seed_rows,
)
from fedhive.core.envelope import Kind, Message

# The kinds' bodies, and what other modules have always imported from here
__all__ = [
    "BODIES",
    "MAX_CLIENTS",
    "MAX_REASON",
    "NO_MODEL",
    "AnnounceBody",
    "Attempt",
    "Body",
    "DoneBody",
    "EnableBody",
    "ErrorBody",
    "EvaluateBody",
    "EvaluationBody",
    "Examples",
    "HeartbeatBody",
    "Member",
    "NodeId",
    "PartialBody",
    "PeerUpdateBody",
    "RegisterBody",
    "RegisteredBody",
    "StopBody",
    "TrainBody",
    "UpdateBody",
    "attempt_claimed",
    "attempt_of",
    "compression_claimed",
    "failure_rows",
    "member_rows",
    "parse_body",
    "seed_rows",
]


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
    heartbeat_interval_s: Annotated[float | None, figure_or_none(int | float)] = None
    # How long a silence from the registered node means the registrar gives it up: a combiner's
    # clients give the combiner up after as long, and ask for another (runtime.assigned_client).
    heartbeat_timeout_s: Annotated[float | None, figure_or_none(int | float)] = None
    combiner: NodeId | None = None  # the answer to a client's request for a combiner


class HeartbeatBody(Body):
    """Signs of life with what a node is doing; the figures are informative, so a bad one is
    dropped rather than the beat."""

    kind = Kind.HEARTBEAT
    status: Annotated[str, text_cut(32)] = ""
    epoch: Annotated[int | None, figure_or_none(int)] = None
    epochs: Annotated[int | None, figure_or_none(int)] = None
    loss: Annotated[float | None, figure_or_none(int | float)] = None
    accuracy: Annotated[float | None, figure_or_none(int | float)] = None
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
        return members_of(self.members or ())

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
        return members_of(self.updates)


class DoneBody(Body):
    kind = Kind.DONE


class StopBody(Body):
    """``reason`` set: the session failed (a client ends with an error); absent: it is over."""

    kind = Kind.STOP
    reason: Annotated[str, text_cut(1000)] | None = None


class ErrorBody(Body):
    kind = Kind.ERROR
    reason: Annotated[str, text_cut(MAX_REASON)] = "unspecified"
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


def attempt_of(msg: Message) -> int:
    """The round attempt an UPDATE, PARTIAL or ERROR answers (0 where the kind has none)."""
    body = parse_body(BODIES[msg.kind], msg)
    return int(getattr(body, "attempt", 0))
