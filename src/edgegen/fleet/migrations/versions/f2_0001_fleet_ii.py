"""Fleet II tables: rollouts, rollout events, rollout policies, telemetry events, counters and streams

Revision ID: f2_0001_fleet_ii
Revises: 0001_core
Create Date: 2026-11-23 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "f2_0001_fleet_ii"
down_revision = "0001_core"
branch_labels = ("fleet_ii",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("rollback_version", sa.Integer(), nullable=True),
        sa.Column("group_name", sa.String(length=200), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", _TS, nullable=False),
        sa.Column("bake_s", sa.Float(), nullable=False),
        sa.Column("settle_fraction", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("last_decision", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollouts_model", "rollouts", ["model"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("readings", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_events_rollout_id", "rollout_events", ["rollout_id"])
    op.create_table(
        "rollout_policies",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("staged", sa.Boolean(), nullable=False),
        sa.Column("released_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "telemetry_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("tpot_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("mean_logprob", sa.Float(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "stream", "seq", name="uq_telemetry_event"),
    )
    op.create_index("ix_telemetry_device_at", "telemetry_events", ["device_id", "at"])
    op.create_index("ix_telemetry_kind_at", "telemetry_events", ["kind", "at"])
    op.create_table(
        "telemetry_counters",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "model_version", "name"),
    )
    op.create_table(
        "telemetry_streams",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("max_seq", sa.BigInteger(), nullable=False),
        sa.Column("dropped_total", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("last_event_at", _TS, nullable=True),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "stream"),
    )


def downgrade() -> None:
    op.drop_table("telemetry_streams")
    op.drop_table("telemetry_counters")
    op.drop_index("ix_telemetry_kind_at", table_name="telemetry_events")
    op.drop_index("ix_telemetry_device_at", table_name="telemetry_events")
    op.drop_table("telemetry_events")
    op.drop_table("rollout_policies")
    op.drop_index("ix_rollout_events_rollout_id", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_index("ix_rollouts_model", table_name="rollouts")
    op.drop_table("rollouts")
