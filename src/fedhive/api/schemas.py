"""Request and response bodies of the REST API (pydantic), and the limits on what users send.

Responses are built from storage rows inside the worker thread that read them (``from_row``), so
no ORM object ever crosses into the event loop. Free-text input is checked to be encodable UTF-8
without control characters: PostgreSQL refuses NUL bytes and every driver refuses lone
surrogates, and either would otherwise surface as a storage failure instead of a 422.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fedhive.app.client_app import HOOKS
from fedhive.app.loader import BUILTIN, LoadedApp
from fedhive.storage.models import (
    ClientResultRow,
    ClientRow,
    ClientStatus,
    DatasetRow,
    ModelRow,
    ModelVersionRow,
    Role,
    RoundRow,
    SessionRow,
    SessionStatus,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Names that appear in URL paths: no slashes, no spaces, nothing that needs escaping.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
MAX_INT = 2**31 - 1  # every integer we pass to SQL fits a 32-bit column


def clean_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


CleanText = Annotated[str, AfterValidator(clean_text)]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[CleanText, Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)]
    # The password rules (8+ characters, at most 72 bytes) are checked by api.security.
    password: Annotated[CleanText, Field(min_length=1, max_length=256)]


class UserOut(BaseModel):
    id: int
    email: str
    role: Role
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int = Field(description="seconds until the token expires")


class PeerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[CleanText, Field(min_length=1, max_length=255)]
    id: Annotated[str | None, Field(pattern=NAME_PATTERN, description="default: a random id")] = None


class PeerCredential(BaseModel):
    id: str
    name: str
    secret: str = Field(description="the node's signing key: shown once, store it now")


class PeerOut(BaseModel):
    id: str
    name: str
    status: ClientStatus
    last_heartbeat: datetime | None
    epoch: int | None
    epochs: int | None
    loss: float | None
    accuracy: float | None
    num_examples: int

    @classmethod
    def from_row(cls, row: ClientRow) -> PeerOut:
        metrics = row.metrics or {}
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            last_heartbeat=row.last_heartbeat,
            epoch=row.epoch,
            epochs=row.epochs,
            loss=_number(metrics.get("loss")),
            accuracy=_number(metrics.get("accuracy")),
            num_examples=row.num_examples,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class ModelRef(BaseModel):
    name: str
    version: int


class SessionOut(BaseModel):
    id: str
    name: str | None = Field(default=None, description="the name given at the start, if any")
    status: SessionStatus
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rounds_done: int
    rounds_total: int
    dataset_id: str | None
    app: str = Field(description="the app the session runs (builtin: the model zoo on the platform's data)")
    final_model: ModelRef | None = None
    config: dict[str, Any]

    @classmethod
    def from_row(cls, row: SessionRow, final_model: ModelRef | None = None) -> SessionOut:
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            reason=row.reason,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            rounds_done=row.rounds_done,
            rounds_total=row.rounds_total,
            dataset_id=row.dataset_id,
            app=str((row.config or {}).get("app") or BUILTIN),
            final_model=final_model,
            config=row.config,
        )


class RoundOut(BaseModel):
    round: int
    metrics: dict[str, Any]
    num_updates: int
    duration_s: float
    created_at: datetime

    @classmethod
    def from_row(cls, row: RoundRow) -> RoundOut:
        return cls(
            round=row.round,
            metrics=row.metrics,
            num_updates=row.num_updates,
            duration_s=row.duration_s,
            created_at=row.created_at,
        )


class ClientResultOut(BaseModel):
    client_id: str
    round: int
    status: str
    num_examples: int
    metrics: dict[str, Any]
    reason: str | None

    @classmethod
    def from_row(cls, row: ClientResultRow) -> ClientResultOut:
        return cls(
            client_id=row.client_id,
            round=row.round,
            status=row.status.value,
            num_examples=row.num_examples,
            metrics=row.metrics,
            reason=row.reason,
        )


class TrainingStatus(BaseModel):
    session_id: str
    status: SessionStatus
    reason: str | None
    round: int = Field(description="rounds done")
    rounds_total: int
    peers: list[PeerOut] = Field(description="peers the session holds now, with their live progress")
    last_round: RoundOut | None
    last_results: list[ClientResultOut] = Field(description="each peer's outcome in the last round")


class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str
    rows: int
    columns: list[str]
    label_column: str | None
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: DatasetRow) -> DatasetOut:
        return cls(
            id=row.id,
            name=row.name,
            sha256=row.sha256,
            rows=row.rows,
            columns=row.columns,
            label_column=row.label_column,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )


class ModelOut(BaseModel):
    name: str
    latest_version: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: ModelRow) -> ModelOut:
        return cls(name=row.name, latest_version=row.latest_version, created_at=row.created_at)


class ModelVersionOut(BaseModel):
    name: str
    version: int
    model_spec: str
    sha256: str
    spec: dict[str, Any] = Field(description="tensor name -> shape and dtype")
    session_id: str | None
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, name: str, row: ModelVersionRow) -> ModelVersionOut:
        return cls(
            name=name,
            version=row.version,
            model_spec=row.model_spec,
            sha256=row.artifact_ref.removeprefix("sha256:"),
            spec=row.spec,
            session_id=row.session_id,
            metrics=row.metrics,
            created_at=row.created_at,
        )


class AppOut(BaseModel):
    name: str = Field(description="what POST /sessions/start takes as app")
    digest: str = Field(description="the first 12 hex digits of the sha256 of the app's code")
    hooks: list[str] = Field(description="which of init, train, evaluate, central_evaluate the app has")
    run_config: dict[str, str | int | float | bool] = Field(description="the app's default run config")

    @classmethod
    def from_loaded(cls, loaded: LoadedApp) -> AppOut:
        return cls(
            name=loaded.name,
            digest=loaded.short_digest,
            hooks=[h for h in HOOKS if loaded.app.has(h)],
            run_config=dict(loaded.run_config),
        )


class Health(BaseModel):
    status: str
    database: str
