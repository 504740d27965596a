"""Telemetry retention on the control plane: by age and by size, per device, with what was pruned
counted (as the device spool counts what it dropped).

    RetentionPolicy(max_age_s, max_events_per_device)   the bounds, as data (None: unbounded)
    prune(session, policy, now) -> dict[device_id, (by_age, by_size)]
        deletes raw events received before ``now - max_age_s`` (the control plane's receipt clock,
        never the device's), then each device's oldest events beyond its newest
        ``max_events_per_device``; adds the counts to ``telemetry_retention`` in the same transaction
    TelemetryRetention   the per-device counters (``pruned_by_age``, ``pruned_by_size``)

Only raw events are pruned: the running counters behind ``/metrics`` (``TelemetryCounter``) and the
per-stream bookkeeping (``TelemetryStream``) stay, so totals and drop counts survive pruning, and
rollout gates read recent windows that retention leaves alone (keep ``max_age_s`` above the longest
gate window). Control-plane only (SQLAlchemy).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, ForeignKey, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgegen.fleet.db import Base, UTCDateTime
from edgegen.telemetry.store import TelemetryEvent

__all__ = ["RetentionPolicy", "TelemetryRetention", "prune"]


class TelemetryRetention(Base):
    __tablename__ = "telemetry_retention"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    pruned_by_age: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pruned_by_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class RetentionPolicy:
    max_age_s: float | None = 30 * 86400.0
    max_events_per_device: int | None = 200_000


def _count(session: Session, device_id: str, now: datetime, by_age: int, by_size: int) -> None:
    row = session.get(TelemetryRetention, device_id)
    if row is None:
        row = TelemetryRetention(device_id=device_id, pruned_by_age=0, pruned_by_size=0)
        session.add(row)
    row.pruned_by_age += by_age
    row.pruned_by_size += by_size
    row.last_pruned_at = now


def prune(session: Session, policy: RetentionPolicy, now: datetime) -> dict[str, tuple[int, int]]:
    """Apply ``policy``; returns ``{device_id: (pruned by age, pruned by size)}``. The caller commits."""
    out: dict[str, tuple[int, int]] = {}
    if policy.max_age_s is not None:
        cutoff = now - timedelta(seconds=policy.max_age_s)
        old = session.execute(select(TelemetryEvent.device_id, func.count()).where(TelemetryEvent.received_at < cutoff)
                              .group_by(TelemetryEvent.device_id)).all()
        for device_id, n in old:
            session.execute(delete(TelemetryEvent).where(TelemetryEvent.device_id == device_id,
                                                         TelemetryEvent.received_at < cutoff))
            out[device_id] = (int(n), 0)
    if policy.max_events_per_device is not None:
        keep = int(policy.max_events_per_device)
        over = session.execute(select(TelemetryEvent.device_id, func.count()).group_by(TelemetryEvent.device_id)
                               .having(func.count() > keep)).all()
        for device_id, n in over:
            if keep > 0:
                threshold = session.scalar(select(TelemetryEvent.id).where(TelemetryEvent.device_id == device_id)
                                           .order_by(TelemetryEvent.id.desc()).offset(keep - 1).limit(1))
                session.execute(delete(TelemetryEvent).where(TelemetryEvent.device_id == device_id,
                                                             TelemetryEvent.id < threshold))
            else:
                session.execute(delete(TelemetryEvent).where(TelemetryEvent.device_id == device_id))
            age, _ = out.get(device_id, (0, 0))
            out[device_id] = (age, int(n) - keep)
    for device_id, (by_age, by_size) in out.items():
        _count(session, device_id, now, by_age, by_size)
    return out
