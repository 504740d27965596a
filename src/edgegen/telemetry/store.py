"""Control-plane side of telemetry: tables, idempotent ingest, and the queries the fleet needs.

    TelemetryEvent    one stored event, unique on (device_id, stream, seq); request fields typed
    TelemetryCounter  running sums per (device, model version, name): what /metrics exports
    TelemetryStream   per device spool stream: highest seq, dropped total, stored and duplicate counts
    ingest(session, device_id, batch) -> Ack
                      ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq`` (SQLite and PostgreSQL),
                      then counters are advanced for the rows actually inserted, in the same
                      transaction; so a batch sent twice (or concurrently) is stored and counted once
    request_window / recent_requests / drift_alerts / latest_logs   reads for gates and the dashboard

Tables derive from the fleet ``Base`` and are created by the Fleet II Alembic branch. This module is
control-plane only (it needs SQLAlchemy); the device side never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgegen.fleet.db import Base, UTCDateTime, utcnow
from edgegen.telemetry.events import Ack, Batch, Event, TelemetryKind
from edgegen.telemetry.rollup import rollup

_ID = BigInteger().with_variant(Integer, "sqlite")


class TelemetryEvent(Base):
    __tablename__ = "telemetry_events"
    __table_args__ = (
        UniqueConstraint("device_id", "stream", "seq", name="uq_telemetry_event"),
        Index("ix_telemetry_device_at", "device_id", "at"),
        Index("ix_telemetry_kind_at", "kind", "at"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    stream: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # device clock
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[int | None] = mapped_column(Integer)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tpot_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    mean_logprob: Mapped[float | None] = mapped_column(Float)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class TelemetryCounter(Base):
    __tablename__ = "telemetry_counters"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0: unknown
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class TelemetryStream(Base):
    __tablename__ = "telemetry_streams"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    max_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_total: Mapped[int] = mapped_column(BigInteger, default=0)
    stored: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    model_version: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _insert(session: Session, table: Any) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"telemetry ingest supports sqlite and postgresql, not {name}")


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def _num(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(body: dict[str, Any], key: str) -> int | None:
    v = _num(body, key)
    return None if v is None else int(v)


def event_row(device_id: str, stream: str, e: Event) -> dict[str, Any]:
    b = e.body
    ok = b.get("ok")
    return {
        "device_id": device_id, "stream": stream, "seq": e.seq, "at": _ts(e.ts), "received_at": utcnow(),
        "kind": e.kind.value, "model_version": _int(b, "model_version"),
        "ok": ok if isinstance(ok, bool) else None,
        "latency_ms": _num(b, "latency_ms"), "ttft_ms": _num(b, "ttft_ms"), "tpot_ms": _num(b, "tpot_ms"),
        "prompt_tokens": _int(b, "prompt_tokens"), "completion_tokens": _int(b, "completion_tokens"),
        "mean_logprob": _num(b, "mean_logprob"), "body": b,
    }


def ingest(session: Session, device_id: str, batch: Batch) -> Ack:
    """Store ``batch`` for ``device_id`` exactly once and commit; returns what was new."""
    if not batch.events:
        return Ack(0, 0, 0)
    rows = [event_row(device_id, batch.stream, e) for e in batch.events]
    table = TelemetryEvent.__table__  # Core, not the ORM: no unit-of-work bookkeeping per row
    stmt = (
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["device_id", "stream", "seq"])
        .returning(table.c.seq)
    )
    inserted = set(session.scalars(stmt, rows).all())
    new_events = [e for e in batch.events if e.seq in inserted]
    sums = rollup(new_events)
    if sums:
        ins = _insert(session, TelemetryCounter)
        up = ins.on_conflict_do_update(
            index_elements=["device_id", "model_version", "name"],
            set_={"value": TelemetryCounter.value + ins.excluded.value},
        )
        session.execute(up, [{"device_id": device_id, "model_version": v, "name": n, "value": x}
                             for (v, n), x in sorted(sums.items())])
    _update_stream(session, device_id, batch, new_events, len(batch.events) - len(new_events))
    session.commit()
    return Ack(len(new_events), len(batch.events) - len(new_events), batch.last_seq)


def _update_stream(session: Session, device_id: str, batch: Batch, new: Sequence[Event], dups: int) -> None:
    # create the row if missing without racing a concurrent first batch, then lock it
    session.execute(_insert(session, TelemetryStream).on_conflict_do_nothing(
        index_elements=["device_id", "stream"]), [{"device_id": device_id, "stream": batch.stream, "max_seq": 0,
                                                   "dropped_total": 0, "stored": 0, "duplicates": 0,
                                                   "updated_at": utcnow()}])
    row = session.get(TelemetryStream, (device_id, batch.stream), with_for_update=True, populate_existing=True)
    assert row is not None
    row.max_seq = max(row.max_seq or 0, batch.last_seq)
    row.dropped_total = max(row.dropped_total or 0, batch.dropped_total)
    row.stored = (row.stored or 0) + len(new)
    row.duplicates = (row.duplicates or 0) + dups
    row.updated_at = utcnow()
    if not new:
        return
    newest = max(new, key=lambda e: e.ts)
    at = _ts(newest.ts)
    if row.last_event_at is None or at >= row.last_event_at:
        row.last_event_at = at
        versioned = [e for e in new if _int(e.body, "model_version") is not None]
        if versioned:
            row.model_version = _int(max(versioned, key=lambda e: e.ts).body, "model_version")
        memory = [e for e in new if e.kind is TelemetryKind.MEMORY and _int(e.body, "rss_bytes") is not None]
        if memory:
            row.rss_bytes = _int(max(memory, key=lambda e: e.ts).body, "rss_bytes")


# ---- reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestWindow:
    requests: int
    errors: int
    latencies_ms: tuple[float, ...]
    logprob_sum: float
    logprob_n: int


def request_window(session: Session, device_id: str, version: int | None, since: datetime,
                   limit: int = 5000) -> RequestWindow:
    """Request events of one device on one model version *received* since ``since`` (newest ``limit``).

    Windows for gates use the control plane's receipt time, never the device's ``at``: a device
    clock an hour behind (or ahead) would otherwise drop its reports out of (or into) a stage's
    window. ``since`` is a control-plane time.
    """
    q = (
        select(TelemetryEvent.ok, TelemetryEvent.latency_ms, TelemetryEvent.mean_logprob)
        .where(TelemetryEvent.device_id == device_id, TelemetryEvent.kind == TelemetryKind.REQUEST.value,
               TelemetryEvent.received_at >= since)
        .order_by(TelemetryEvent.received_at.desc())
        .limit(limit)
    )
    if version is not None:
        q = q.where(TelemetryEvent.model_version == version)
    rows = session.execute(q).all()
    lat = tuple(r.latency_ms for r in rows if r.latency_ms is not None)
    lps = [r.mean_logprob for r in rows if r.mean_logprob is not None]
    return RequestWindow(len(rows), sum(1 for r in rows if r.ok is False), lat, float(sum(lps)), len(lps))


def drift_alert_since(session: Session, device_id: str, version: int | None, since: datetime) -> bool:
    """Whether a drift report with an alert was *received* since ``since`` (control-plane time)."""
    q = select(TelemetryEvent.body).where(
        TelemetryEvent.device_id == device_id, TelemetryEvent.kind == TelemetryKind.DRIFT.value,
        TelemetryEvent.received_at >= since)
    if version is not None:
        q = q.where(TelemetryEvent.model_version == version)
    return any(bool(b.get("drift")) for b in session.scalars(q))


def drift_alerts(session: Session, device_ids: Sequence[str], since: datetime) -> dict[str, str]:
    """device -> reasons of its latest drift alert *received* since ``since`` (any model version)."""
    if not device_ids:
        return {}
    q = (select(TelemetryEvent.device_id, TelemetryEvent.body)
         .where(TelemetryEvent.device_id.in_(list(device_ids)), TelemetryEvent.kind == TelemetryKind.DRIFT.value,
                TelemetryEvent.received_at >= since)
         .order_by(TelemetryEvent.received_at, TelemetryEvent.id))
    out: dict[str, str] = {}
    for dev, body in session.execute(q).all():
        if body.get("drift"):
            out[dev] = str(body.get("reasons", ""))
    return out


def recent(session: Session, kind: TelemetryKind, since: datetime, limit: int = 20000) -> list[TelemetryEvent]:
    return list(session.scalars(
        select(TelemetryEvent).where(TelemetryEvent.kind == kind.value, TelemetryEvent.at >= since)
        .order_by(TelemetryEvent.at.desc()).limit(limit)))


def mean_logprob(session: Session, device_ids: Sequence[str], version: int, since: datetime) -> float | None:
    if not device_ids:
        return None
    value = session.scalar(
        select(func.avg(TelemetryEvent.mean_logprob)).where(
            TelemetryEvent.device_id.in_(list(device_ids)), TelemetryEvent.model_version == version,
            TelemetryEvent.kind == TelemetryKind.REQUEST.value, TelemetryEvent.received_at >= since))
    return None if value is None else float(value)


def counters(session: Session) -> list[TelemetryCounter]:
    return list(session.scalars(select(TelemetryCounter)))


def streams(session: Session) -> list[TelemetryStream]:
    return list(session.scalars(select(TelemetryStream)))


def stored_seqs(session: Session, device_id: str, stream: str | None = None) -> list[int]:
    q = select(TelemetryEvent.seq).where(TelemetryEvent.device_id == device_id).order_by(TelemetryEvent.seq)
    if stream is not None:
        q = q.where(TelemetryEvent.stream == stream)
    return list(session.scalars(q))
