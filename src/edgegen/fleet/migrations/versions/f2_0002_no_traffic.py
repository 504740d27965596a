"""Rollouts: the no-traffic policy (seconds, then advance | halt | wait)

Revision ID: f2_0002_no_traffic
Revises: f2_0001_fleet_ii
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "f2_0002_no_traffic"
down_revision = "f2_0001_fleet_ii"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("no_traffic_s", sa.Float(), nullable=False, server_default="600"))
        batch.add_column(sa.Column("on_no_traffic", sa.String(length=16), nullable=False,
                                   server_default="advance"))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("on_no_traffic")
        batch.drop_column("no_traffic_s")
