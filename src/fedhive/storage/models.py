"""The metadata schema: accounts, nodes, training sessions and what they produce, the model
registry and uploaded data sets. ``Base.metadata`` is what the migrations are checked against.

Portability rules (the same schema runs on SQLite and PostgreSQL):
- ``sa.JSON`` for free-form documents (configs, metrics, parameter specs);
- statuses are VARCHAR + CHECK (``native_enum=False``), never PostgreSQL enum types, which would
  need their own migrations to gain a value;
- every timestamp is timezone-aware UTC (``UTCDateTime``); SQLite has no time zone, so it stores
  naive UTC and we attach UTC on the way out.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so later migrations can drop or alter them by name (SQLite batch mode needs it).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
REF_LENGTH = 80  # "sha256:" + 64 hex digits, with room to spare


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every backend. Naive datetimes are refused: their time
    zone is a guess, and a wrong guess silently shifts heartbeats and deadlines by hours."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (use an aware datetime, e.g. datetime.now(UTC))")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_document(value: Any, what: str) -> Any:
    """``value`` as plain JSON data, checked before anything is written, the same way on every
    backend: numpy scalars become numbers, and NaN/Inf become null (PostgreSQL rejects them, and
    a diverged round's ``loss: NaN`` must not stop its round from being recorded)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{what}: JSON object keys must be strings, not {sorted(map(repr, value))}")
        return {k: json_document(v, what) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_document(v, what) for v in value]
    raise TypeError(f"{what}: a {type(value).__name__} cannot be stored as JSON")


def status_type(enum: type[StrEnum], name: str) -> sa.Enum:
    """VARCHAR + CHECK holding the enum's values (not its member names)."""
    return sa.Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
        list[str]: sa.JSON(),
    }


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class ClientStatus(StrEnum):
    """Same values as ``runtime.registry.PeerStatus`` (storage does not import the runtime)."""

    ONLINE = "ONLINE"
    TRAINING = "TRAINING"
    OFFLINE = "OFFLINE"


class SessionStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED})


class ResultStatus(StrEnum):
    """What became of one client's update in one round."""

    ACCEPTED = "ACCEPTED"  # aggregated
    REJECTED = "REJECTED"  # failed validation (shape, dtype, finiteness, signature)
    LATE = "LATE"  # arrived after the round closed; dropped
    FAILED = "FAILED"  # the client reported an error or went OFFLINE


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(status_type(Role, "role"), default=Role.USER)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClientRow(Base):
    """A registered node. ``secret`` is the node's HMAC key sealed with the server's key
    (``storage.secret_box``): the coordinator must recompute each message's HMAC-SHA256, so it
    needs the key itself and a hash (as for passwords) would not do, but the database (and every
    backup of it) holds only the sealed form. Rotating a node's key is a new client."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    secret: Mapped[str] = mapped_column(sa.String(128))
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"), index=True)
    status: Mapped[ClientStatus] = mapped_column(
        status_type(ClientStatus, "client_status"), default=ClientStatus.OFFLINE, index=True
    )
    # The session that holds the node while it is TRAINING (the "lock" of the P2P workflow).
    session_id: Mapped[str | None] = mapped_column(sa.ForeignKey("sessions.id", ondelete="SET NULL"))
    last_heartbeat: Mapped[datetime | None]
    num_examples: Mapped[int] = mapped_column(default=0)
    epoch: Mapped[int | None]
    epochs: Mapped[int | None]
    metrics: Mapped[dict[str, Any] | None]  # from the last heartbeat: loss, accuracy
    # A site agent's announcement, checked and bounded (service.sites): agent version, apps, data sets.
    site: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The node's own RabbitMQ user (``fedhive admin site create --broker-user``): the hub declares
    # its queue and refuses its messages published by any other login. None: a shared login.
    broker_user: Mapped[str | None] = mapped_column(sa.String(64))
    # "site" (an agent: claimed for sessions) or "combiner" (trusted infrastructure that aggregates
    # a hierarchical session's sites; ``fedhive admin site create --role combiner``): never claimed as a site.
    role: Mapped[str] = mapped_column(sa.String(16), default="site", server_default="site")


class DatasetRow(Base):
    """An uploaded data set (a CSV in the artifact store); ``sha256`` is the digest of its ref."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    artifact_ref: Mapped[str] = mapped_column(sa.String(REF_LENGTH))
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    rows: Mapped[int]
    columns: Mapped[list[str]]
    label_column: Mapped[str | None] = mapped_column(sa.String(255))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(Base):
    """A named model in a user's registry. ``latest_version`` is the version counter: bumping it
    with one UPDATE serialises concurrent ``add_model_version`` calls on every backend."""

    __tablename__ = "models"
    __table_args__ = (sa.UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(sa.String(255))
    latest_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(Base):
    """One immutable version: the parameters (safetensors bytes in the artifact store), their spec
    (name -> shape, dtype), the builder spec string, and where it came from."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int]
    artifact_ref: Mapped[str] = mapped_column(sa.String(REF_LENGTH))
    spec: Mapped[dict[str, Any]]
    model_spec: Mapped[str] = mapped_column(sa.String(255))
    session_id: Mapped[str | None] = mapped_column(sa.ForeignKey("sessions.id", ondelete="SET NULL"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionRow(Base):
    """A training session. ``owner_id`` is empty for sessions started without an account (the
    embedded CLI); ``config`` is the session configuration as JSON, kept to resume after a crash."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    status: Mapped[SessionStatus] = mapped_column(
        status_type(SessionStatus, "session_status"), default=SessionStatus.PENDING, index=True
    )
    config: Mapped[dict[str, Any]]
    name: Mapped[str | None] = mapped_column(sa.String(100))  # the user's name for it, if given
    reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    rounds_total: Mapped[int]
    rounds_done: Mapped[int] = mapped_column(default=0)
    dataset_id: Mapped[str | None] = mapped_column(sa.ForeignKey("datasets.id"))
    # sessions <-> model_versions reference each other; use_alter lets either table be created first.
    final_model_version_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="SET NULL", use_alter=True)
    )


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (sa.UniqueConstraint("session_id", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("sessions.id", ondelete="CASCADE"))
    round: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_updates: Mapped[int]
    duration_s: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClientResultRow(Base):
    """One client's outcome in one round. ``client_id`` is not a foreign key: simulated clients
    (thousands per process) take part in rounds without being registered nodes."""

    __tablename__ = "client_round_results"
    __table_args__ = (sa.UniqueConstraint("session_id", "round", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("sessions.id", ondelete="CASCADE"))
    round: Mapped[int]
    client_id: Mapped[str] = mapped_column(sa.String(64))
    num_examples: Mapped[int] = mapped_column(default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[ResultStatus] = mapped_column(status_type(ResultStatus, "result_status"))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    # The combiner whose partial carried this client's update (hierarchical sessions), else empty.
    via: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CheckpointRow(Base):
    """Where a session can resume: the global parameters and the strategy state after ``round``
    (both artifact refs; the state is empty for stateless strategies such as plain FedAvg)."""

    __tablename__ = "checkpoints"
    __table_args__ = (sa.UniqueConstraint("session_id", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("sessions.id", ondelete="CASCADE"))
    round: Mapped[int]
    params_ref: Mapped[str] = mapped_column(sa.String(REF_LENGTH))
    state_ref: Mapped[str | None] = mapped_column(sa.String(REF_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
