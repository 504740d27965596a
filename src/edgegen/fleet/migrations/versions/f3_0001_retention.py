"""Fleet III: telemetry retention counters per device (events pruned by age and by size)

Revision ID: f3_0001_retention
Revises: f2_0001_fleet_ii
Create Date: 2026-11-30 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "f3_0001_retention"
down_revision = "f2_0001_fleet_ii"
branch_labels = ("fleet_iii",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_retention",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("pruned_by_age", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("pruned_by_size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("telemetry_retention")
