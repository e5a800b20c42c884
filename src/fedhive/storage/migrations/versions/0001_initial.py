"""Initial schema: users, clients, datasets, sessions, rounds, client results, checkpoints, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Migrations are frozen history: they spell out plain column types rather than importing today's
models (``UTCDateTime`` is ``DateTime(timezone=True)`` in the database).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _status(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", _status("role", "user", "admin"), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("artifact_ref", sa.String(80), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("label_column", sa.String(255), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_datasets_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index(op.f("ix_datasets_owner_id"), "datasets", ["owner_id"])
    op.create_index(op.f("ix_datasets_sha256"), "datasets", ["sha256"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_models_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_models_owner_id_name")),
    )
    # sessions.final_model_version_id -> model_versions is added below, once that table exists.
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column(
            "status",
            _status("session_status", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"),
            nullable=False,
        ),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rounds_total", sa.Integer(), nullable=False),
        sa.Column("rounds_done", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=True),
        sa.Column("final_model_version_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_sessions_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_sessions_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_owner_id"), "sessions", ["owner_id"])
    op.create_index(op.f("ix_sessions_status"), "sessions", ["status"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_ref", sa.String(80), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("model_spec", sa.String(255), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_versions_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_model_versions_session_id_sessions"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )
    op.create_index(op.f("ix_model_versions_session_id"), "model_versions", ["session_id"])
    # Batch mode: SQLite cannot add a constraint with ALTER, so it rebuilds the (empty) table.
    with op.batch_alter_table("sessions") as batch:
        batch.create_foreign_key(
            op.f("fk_sessions_final_model_version_id_model_versions"),
            "model_versions",
            ["final_model_version_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "clients",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("status", _status("client_status", "ONLINE", "TRAINING", "OFFLINE"), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_clients_owner_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_clients_session_id_sessions"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
    )
    op.create_index(op.f("ix_clients_owner_id"), "clients", ["owner_id"])
    op.create_index(op.f("ix_clients_status"), "clients", ["status"])
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("num_updates", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_rounds_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
        sa.UniqueConstraint("session_id", "round", name=op.f("uq_rounds_session_id_round")),
    )
    op.create_table(
        "client_round_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", _status("result_status", "ACCEPTED", "REJECTED", "LATE", "FAILED"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_client_round_results_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_round_results")),
        sa.UniqueConstraint(
            "session_id", "round", "client_id", name=op.f("uq_client_round_results_session_id_round_client_id")
        ),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("params_ref", sa.String(80), nullable=False),
        sa.Column("state_ref", sa.String(80), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_checkpoints_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("session_id", "round", name=op.f("uq_checkpoints_session_id_round")),
    )


def downgrade() -> None:
    for table in ("checkpoints", "client_round_results", "rounds", "clients"):
        op.drop_table(table)
    # Break the sessions <-> model_versions cycle before dropping either table.
    with op.batch_alter_table("sessions") as batch:
        batch.drop_constraint(op.f("fk_sessions_final_model_version_id_model_versions"), type_="foreignkey")
    for table in ("model_versions", "sessions", "models", "datasets", "users"):
        op.drop_table(table)
