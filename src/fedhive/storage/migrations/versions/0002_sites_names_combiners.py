"""What the finished dashboard shows: a site's announcement, a session's name, the combiner a
client's update came through.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

- ``clients.site``: what a site agent announces (agent version, apps, data sets), JSON;
- ``sessions.name``: a name the user gives a session (optional);
- ``client_round_results.via``: the combiner whose partial carried a client's update
  (hierarchical sessions); empty for a client that answered the coordinator itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("site", sa.JSON(), nullable=True))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("name", sa.String(100), nullable=True))
    with op.batch_alter_table("client_round_results") as batch:
        batch.add_column(sa.Column("via", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("client_round_results") as batch:
        batch.drop_column("via")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("name")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("site")
