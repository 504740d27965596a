"""Telemetry retention on the control plane: by receipt age and by count, per device, counted;
on a real migrated database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from edgegen.fleet.db import Base
from edgegen.telemetry import store
from edgegen.telemetry.events import Batch, Event, TelemetryKind, request_body
from edgegen.telemetry.retention import RetentionPolicy, TelemetryRetention, prune


def batch(first: int, n: int, stream: str = "s") -> Batch:
    return Batch(stream, tuple(Event(i, 1_700_000_000.0 + i, TelemetryKind.REQUEST,
                                     request_body(model_version=1, prompt_tokens=3, completion_tokens=2, ttft_s=0.1,
                                                  total_s=0.2, ok=True))
                              for i in range(first, first + n)))


def count(session, device: str) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).select_from(store.TelemetryEvent)
                          .where(store.TelemetryEvent.device_id == device)) or 0


def test_retention_by_age_and_by_size_per_device(sessions) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    with sessions() as s:
        store.ingest(s, "dev0", batch(1, 30))
        store.ingest(s, "dev1", batch(1, 5))
        # dev0's first 10 events arrived 40 days ago (receipt time: a device clock cannot fake it)
        s.execute(update(store.TelemetryEvent).where(store.TelemetryEvent.device_id == "dev0",
                                                     store.TelemetryEvent.seq <= 10)
                  .values(received_at=now - timedelta(days=40)))
        s.commit()
    with sessions() as s:
        pruned = prune(s, RetentionPolicy(max_age_s=30 * 86400.0, max_events_per_device=15), now)
        s.commit()
    assert pruned == {"dev0": (10, 5)}  # 10 too old, then 20 left, 5 over the bound; dev1 untouched
    with sessions() as s:
        assert count(s, "dev0") == 15 and count(s, "dev1") == 5
        seqs = sorted(s.scalars(select(store.TelemetryEvent.seq).where(store.TelemetryEvent.device_id == "dev0")))
        assert seqs == list(range(16, 31))  # the newest are kept
        r = s.get(TelemetryRetention, "dev0")
        assert (r.pruned_by_age, r.pruned_by_size) == (10, 5)
        # totals behind /metrics survive pruning
        stream = s.scalars(select(store.TelemetryStream).where(store.TelemetryStream.device_id == "dev0")).one()
        assert stream.stored == 30
    with sessions() as s:  # a second run finds nothing more to do and adds nothing
        assert prune(s, RetentionPolicy(max_age_s=30 * 86400.0, max_events_per_device=15), now) == {}
        s.commit()
        assert s.get(TelemetryRetention, "dev0").pruned_by_size == 5


def test_retention_table_matches_its_migration(sessions) -> None:  # type: ignore[no-untyped-def]
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert [d for d in diffs if "telemetry_retention" in repr(d)] == []
