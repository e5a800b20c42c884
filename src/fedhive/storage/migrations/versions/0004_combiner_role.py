"""Remote combiners for ``fedhive serve`` (issue 14, item 3).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

- ``clients.role``: ``site`` (an agent, claimed for sessions) or ``combiner`` (a long-lived
  ``fedhive combiner --agent`` that a hierarchical session may use; never claimed as a site).
  Every existing node is a site.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="site"))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("role")
