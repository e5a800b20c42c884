"""A site's own broker user (issue 15, broker isolation for site agents).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

- ``clients.broker_user``: the RabbitMQ user a node logs in as when it has one of its own
  (``fedhive admin site create --broker-user``); the hub declares that node's queue and refuses
  its messages when another login published them. NULL: the node shares a login.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("broker_user", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("broker_user")
