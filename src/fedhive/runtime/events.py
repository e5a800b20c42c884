"""Events on a node's bus. Observers subscribe to these; only ids and numbers, never connections."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedhive.app.learner import EvalResult, FitResult
from fedhive.core.envelope import Message
from fedhive.core.params import Params
from fedhive.strategies.base import AggregateResult


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessageIn:
    message: Message


@dataclass(frozen=True, slots=True)
class RegistrationDeadline:
    pass


@dataclass(frozen=True, slots=True)
class RoundDeadline:
    round: int
    attempt: int


@dataclass(frozen=True, slots=True)
class HeartbeatCheck:
    pass


# -- coordinator facts (observers read these) ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientStatusChanged:
    client_id: str
    status: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    client_id: str
    status: str
    round: int
    epoch: int | None
    epochs: int | None
    loss: float | None
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class SiteAnnounced:
    """A site agent told the hub what it is (``site``: agent version, apps, data sets), first or changed."""

    client_id: str
    site: dict[str, object]
    num_examples: int = 0  # what it registered with


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session_id: str
    config: dict[str, object]
    clients: list[str]
    start_round: int = 1
    population: int | None = None  # how many clients take part; ``clients`` is empty when too many to list


@dataclass(frozen=True, slots=True)
class RoundStarted:
    round: int
    attempt: int
    selected: list[str]


@dataclass(frozen=True, slots=True)
class UpdateAccepted:
    round: int
    client_id: str
    num_examples: int
    metrics: dict[str, float]
    nbytes: int


@dataclass(frozen=True, slots=True)
class UpdateAcceptedVia:
    """A client's update, accepted as part of its combiner's partial (hierarchical sessions)."""

    round: int
    client_id: str
    num_examples: int
    metrics: dict[str, float]
    via: str


@dataclass(frozen=True, slots=True)
class UpdateRejected:
    round: int
    client_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoundAggregated:
    """Internal: the worker thread finished aggregation and evaluation of a round."""

    round: int
    attempt: int
    params: Params
    aggregate: AggregateResult
    evaluation: EvalResult | None


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    round: int
    params: Params
    metrics: dict[str, float]  # global: loss, accuracy (held-out test set, or client-weighted train metrics)
    train_metrics: dict[str, float]
    num_updates: int
    num_selected: int
    num_examples: int
    duration_s: float
    late_or_missing: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoundRetried:
    round: int
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionCompleted:
    session_id: str
    rounds: int
    params: Params
    metrics: dict[str, float]
    stopped_early: bool = False  # patience ran out before the last round


@dataclass(frozen=True, slots=True)
class ClientEvaluated:
    """A client's figures for the global model of ``round``, on its own data."""

    round: int
    client_id: str
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class EvaluationCompleted:
    """The clients' figures for ``round``'s global model, aggregated by the session's rules."""

    round: int
    metrics: dict[str, float]
    clients: int  # that evaluated
    failed: dict[str, str]  # client -> why it gave no figures


@dataclass(frozen=True, slots=True)
class BestModel:
    """``round``'s global model is the best so far by ``metric``."""

    round: int
    metric: str
    value: float
    params: Params


@dataclass(frozen=True, slots=True)
class SessionFailedEvent:
    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Whoever owns the session wants it stopped (a command-line coordinator told by the server it
    reports to): the coordinator sends STOP to every client, dispatches ``SessionCancelled`` and
    ends its run with ``errors.SessionCancelled``."""

    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionCancelled:
    """Someone stopped the session (the platform's cancel); dispatched after its coordinator is gone."""

    session_id: str
    reason: str


# -- client facts ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientRegistered:
    client_id: str


@dataclass(frozen=True, slots=True)
class TrainingStarted:
    round: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ClientStopped:
    """The coordinator said STOP: the session is over for this client."""

    client_id: str
    rounds_trained: int
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class TrainingFinished:
    round: int
    attempt: int
    result: FitResult | None
    error: str | None = None
