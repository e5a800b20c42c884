"""Sessions that run elsewhere and report here: ``fedhive coordinator --report-to URL``.

A command-line coordinator owns its session: it runs the rounds, holds the model and its
checkpoints. The platform only records what it reports (rounds, each client's outcome, status and
the reason it ended) in the same rows a platform session has, so the dashboard and the REST API
show both alike. Such a session is marked in its stored config (``REPORTED_KEY``): the platform's
coordinator never resumes it after a restart (``SessionManager`` skips it), and only its owner's
reports change it.

Cancelling one on the platform (the dashboard's button, ``POST /sessions/{id}/cancel``) marks it
CANCELLED there; the command-line coordinator learns it from its next report (an empty batch
every report interval asks for the status), answered 409 with the code ``CANCELLED_CODE``, and
ends its session as CANCELLED (STOP to its clients). This is also how a session whose coordinator
died without a word (SIGKILL) is cleared from the dashboard.

Its final model: the coordinator uploads it once the session COMPLETED (``api.reported_model``),
and ``attach_model`` makes it the session's model as a platform session's is (a version of the
owner's model ``session-<id>``, the session's final model: the dashboard's download link).

Everything here works inside the caller's unit of work on the metadata store (blocking: the API
runs it in a worker thread).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedhive.app.loader import BUILTIN
from fedhive.storage import models_repo, sessions_repo
from fedhive.storage.models import TERMINAL_STATUSES, ResultStatus, SessionRow, SessionStatus

REPORTED_KEY = "reported"  # in the stored config: {"by": ..., "topology": ...}
# Sessions a user may have reporting at once: a coordinator killed without a word leaves one
# RUNNING until its owner cancels it, and a runaway script must not fill the store.
MAX_OPEN_REPORTED = 20


def is_reported(config: Mapping[str, Any] | None) -> bool:
    """Whether a stored session config is a reported session's (run and resumed elsewhere)."""
    return bool(config) and isinstance(config.get(REPORTED_KEY), dict)  # type: ignore[union-attr]


# The machine-readable code of the answer that the session was cancelled on the platform (its
# coordinator stops on it; every other 409 only stops the reporting).
CANCELLED_CODE = "session_cancelled"


class ReportRefused(Exception):
    """The report cannot be taken: ``status`` is the HTTP answer (404, 409), ``str`` its one line,
    ``code`` a machine-readable name where the reporter must act on it (``CANCELLED_CODE``)."""

    def __init__(self, status: int, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Started:
    clients: Sequence[str]


@dataclass(frozen=True)
class ClientResult:
    round: int
    client_id: str
    status: ResultStatus
    num_examples: int = 0
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    reason: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class RoundDone:
    round: int
    metrics: Mapping[str, float | None]
    train_metrics: Mapping[str, float | None]
    num_updates: int
    num_selected: int
    missing: Sequence[str]
    bytes_received: int
    duration_s: float
    extra: Mapping[str, float | None] = field(default_factory=dict)  # the strategy's own round figures


@dataclass(frozen=True)
class Ended:
    status: SessionStatus  # COMPLETED, FAILED or CANCELLED
    reason: str


Report = Started | ClientResult | RoundDone | Ended


def open_reported(
    s: Session,
    owner_id: int,
    config: Mapping[str, Any],
    *,
    rounds_total: int,
    name: str | None,
    topology: str,
) -> tuple[SessionRow, bool]:
    """The owner's reported session ``config["session_id"]``: created PENDING, or the same one
    again when its coordinator resumed after a stop (True: created). ``ReportRefused`` when the id
    is anyone else's or a platform session's (409, without saying whose), or the session ended."""
    session_id = str(config["session_id"])
    row = sessions_repo.session_by_id(s, session_id)
    if row is not None:
        if row.owner_id != owner_id or not is_reported(row.config):
            raise ReportRefused(409, f"session id {session_id!r} is taken: give the session another id")
        if row.status in TERMINAL_STATUSES:
            raise ReportRefused(
                409, f"session {session_id!r} already ended ({row.status.value}): give the session another id"
            )
        return row, False
    if _open_reported(s, owner_id) >= MAX_OPEN_REPORTED:
        raise ReportRefused(
            409, f"{MAX_OPEN_REPORTED} of your reported sessions are unfinished: cancel those whose coordinator died"
        )
    stored = {**config, REPORTED_KEY: {"by": "fedhive coordinator", "topology": topology}}
    row = sessions_repo.create_session(
        s, config=stored, rounds_total=rounds_total, owner_id=owner_id, session_id=session_id, name=name
    )
    return row, True


def _open_reported(s: Session, owner_id: int) -> int:
    rows = s.scalars(
        sa.select(SessionRow.config).where(SessionRow.owner_id == owner_id, SessionRow.status.not_in(TERMINAL_STATUSES))
    )
    return sum(1 for config in rows if is_reported(config))


def apply_reports(s: Session, owner_id: int, session_id: str, reports: Sequence[Report]) -> SessionStatus:
    """Record a batch of reports (all or none: the caller's unit of work); the session's status
    after it. Reports after an end in the same batch are ignored (ended is final). An empty batch
    records nothing: the coordinator's question whether its session was cancelled here."""
    row = sessions_repo.get_session(s, session_id, owner_id=owner_id)
    if row is None:
        raise ReportRefused(404, f"no session {session_id!r}")
    if not is_reported(row.config):
        raise ReportRefused(409, f"session {session_id!r} is run by the platform: it takes no reports")
    if row.status is SessionStatus.CANCELLED:
        why = f"session {session_id!r} was cancelled on the server by its owner"
        raise ReportRefused(409, f"{why}: {row.reason}" if row.reason else why, CANCELLED_CODE)
    if row.status in TERMINAL_STATUSES:
        raise ReportRefused(409, f"session {session_id!r} already ended ({row.status.value})")
    for report in reports:
        if isinstance(report, ClientResult | RoundDone) and report.round > row.rounds_total:
            raise ReportRefused(422, f"round {report.round} is beyond the session's {row.rounds_total} rounds")
    for report in reports:
        if _apply(s, session_id, report):
            break
    s.flush()
    s.refresh(row)
    return row.status


def _apply(s: Session, session_id: str, report: Report) -> bool:
    """Write one report; True when it ended the session."""
    if isinstance(report, Started):
        sessions_repo.set_session_status(s, session_id, SessionStatus.RUNNING)
    elif isinstance(report, ClientResult):
        sessions_repo.record_client_result(
            s,
            session_id,
            report.round,
            report.client_id,
            status=report.status,
            num_examples=report.num_examples,
            metrics=report.metrics,
            reason=report.reason,
            via=report.via,
        )
    elif isinstance(report, RoundDone):
        # The document a platform round holds (service.persistence), so the dashboard reads both alike.
        metrics = {
            **report.metrics,
            "train": dict(report.train_metrics),
            "selected": report.num_selected,
            "missing": list(report.missing),
            "bytes_received": report.bytes_received,
            **report.extra,
        }
        sessions_repo.record_round(
            s, session_id, report.round, metrics=metrics, num_updates=report.num_updates, duration_s=report.duration_s
        )
    else:
        sessions_repo.set_session_status(s, session_id, report.status, reason=report.reason)
        return True
    return False


def attach_model(
    s: Session, owner_id: int, session_id: str, *, artifact_ref: str, tensors: list[dict[str, object]]
) -> int:
    """Make the stored model ``artifact_ref`` the reported session's final model; its version id.
    ``ReportRefused``: not the owner's (404), a platform session's, not COMPLETED, or one already held (409)."""
    row = sessions_repo.get_session(s, session_id, owner_id=owner_id)
    if row is None:
        raise ReportRefused(404, f"no session {session_id!r}")
    if not is_reported(row.config):
        raise ReportRefused(409, f"session {session_id!r} is run by the platform: its model is its own")
    if row.status is not SessionStatus.COMPLETED:
        raise ReportRefused(409, f"session {session_id!r} is {row.status.value}: only a completed one's model is taken")
    if row.final_model_version_id is not None:
        raise ReportRefused(409, f"session {session_id!r} already has its model")
    config = row.config or {}
    app = config.get("app")
    spec = f"app:{app}" if app and app != BUILTIN else str(config.get("model", ""))
    version = models_repo.add_model_version(
        s, owner_id, f"session-{session_id}", artifact_ref=artifact_ref, spec={"tensors": tensors},
        model_spec=spec[:255], session_id=session_id, create=True,
    )  # fmt: skip
    sessions_repo.set_final_model(s, session_id, version.id)
    return version.id
