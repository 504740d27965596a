"""Runtime II: the device profile each device reports (``plan.DeviceProfile`` as JSON), so rollouts can
target devices by profile or by what the planner says fits them

Revision ID: r2_0001_device_profile
Revises: 0001_core
Create Date: 2026-11-30 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r2_0001_device_profile"
down_revision = "0001_core"
branch_labels = ("runtime_ii",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("profile", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("profile")
