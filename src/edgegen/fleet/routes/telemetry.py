"""Telemetry HTTP API: device ingest, Prometheus metrics, and admin reads.

    POST /v1/telemetry                 (device credential) one batch from a device spool; answers
                                       ``{"stored", "duplicates", "acked_seq"}``; idempotent
    GET  /metrics                      (admin token) Prometheus text format: per device and model
                                       version counters and histograms, drops, memory, fleet gauges
    GET  /v1/admin/telemetry/streams   (admin) per device stream: stored, duplicates, dropped, max seq
    GET  /v1/admin/telemetry/events    (admin) newest events, filterable by device and kind
    POST /v1/admin/telemetry/prune     (admin) apply the retention policy now; pruned counts per device
    GET  /v1/admin/drift?group=G       (admin) the group's drift verdict (``drift.group``): which
                                       members raised a drift alert in the last ``hours``, and
                                       whether that flags the group for learning
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from edgegen.drift.group import group_drift
from edgegen.fleet.auth import AdminDep, DeviceDep, PlaneDep, SessionDep
from edgegen.fleet.db import Device
from edgegen.fleet.rollout import RolloutState
from edgegen.fleet.rollout_db import RolloutRow
from edgegen.telemetry import retention, store
from edgegen.telemetry.events import MAX_BATCH_EVENTS, Batch, Event, TelemetryKind, validate_body
from edgegen.telemetry.rollup import CounterRow, StreamRow, render_prometheus

router = APIRouter(tags=["telemetry"])

ONLINE_WINDOW = timedelta(minutes=2)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=1)
    ts: float = Field(ge=0, le=1e11)
    kind: TelemetryKind
    body: dict[str, Any]

    @field_validator("body")
    @classmethod
    def _body(cls, v: dict[str, Any]) -> dict[str, Any]:
        return validate_body(v)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    dropped_total: int = Field(default=0, ge=0)
    events: list[EventIn] = Field(max_length=MAX_BATCH_EVENTS)


@router.post("/v1/telemetry")
def ingest(body: BatchIn, device: DeviceDep, session: SessionDep) -> dict[str, Any]:
    seqs = [e.seq for e in body.events]
    if seqs != sorted(set(seqs)):
        raise HTTPException(422, "events must be in strictly increasing seq order")
    batch = Batch(body.stream, tuple(Event(e.seq, e.ts, e.kind, e.body) for e in body.events), body.dropped_total)
    ack = store.ingest(session, device.id, batch)
    return {"stored": ack.stored, "duplicates": ack.duplicates, "acked_seq": ack.acked_seq}


@router.get("/metrics")
def metrics(_: AdminDep, session: SessionDep) -> Response:
    counters = [CounterRow(c.device_id, c.model_version, c.name, c.value) for c in store.counters(session)]
    streams = [StreamRow(s.device_id, s.dropped_total, s.stored, s.duplicates, s.rss_bytes)
               for s in store.streams(session)]
    now = datetime.now(timezone.utc)
    n_devices = session.scalar(select(func.count()).select_from(Device).where(Device.revoked_at.is_(None))) or 0
    online = session.scalar(select(func.count()).select_from(Device).where(
        Device.revoked_at.is_(None), Device.last_seen_at >= now - ONLINE_WINDOW)) or 0
    running = session.scalar(select(func.count()).select_from(RolloutRow).where(
        RolloutRow.state == RolloutState.RUNNING.value)) or 0
    gauges = {
        "devices": ("Enrolled, unrevoked devices.", float(n_devices)),
        "devices_online": ("Devices seen in the last two minutes.", float(online)),
        "rollouts_running": ("Rollouts currently running.", float(running)),
    }
    return Response(render_prometheus(counters, streams, gauges), media_type="text/plain; version=0.0.4")


@router.get("/v1/admin/telemetry/streams")
def streams(_: AdminDep, session: SessionDep) -> list[dict[str, Any]]:
    return [
        {"device_id": s.device_id, "stream": s.stream, "max_seq": s.max_seq, "stored": s.stored,
         "duplicates": s.duplicates, "dropped_total": s.dropped_total, "rss_bytes": s.rss_bytes,
         "model_version": s.model_version,
         "last_event_at": s.last_event_at.isoformat() if s.last_event_at else None}
        for s in store.streams(session)
    ]


@router.get("/v1/admin/telemetry/events")
def events(_: AdminDep, session: SessionDep, device_id: str | None = None, kind: TelemetryKind | None = None,
           limit: int = 200) -> list[dict[str, Any]]:
    q = select(store.TelemetryEvent).order_by(store.TelemetryEvent.id.desc()).limit(max(1, min(limit, 10000)))
    if device_id is not None:
        q = q.where(store.TelemetryEvent.device_id == device_id)
    if kind is not None:
        q = q.where(store.TelemetryEvent.kind == kind.value)
    return [{"device_id": e.device_id, "stream": e.stream, "seq": e.seq, "at": e.at.isoformat(),
             "kind": e.kind, "body": e.body} for e in session.scalars(q)]


@router.post("/v1/admin/telemetry/prune")
def prune_now(_: AdminDep, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    """Apply the retention policy now (the app's lifespan also runs it periodically)."""
    pruned = retention.prune(session, plane.config.retention, datetime.now(timezone.utc))
    session.commit()
    return {"pruned": {d: {"by_age": a, "by_size": b} for d, (a, b) in pruned.items()},
            "totals": {r.device_id: {"by_age": r.pruned_by_age, "by_size": r.pruned_by_size}
                       for r in session.scalars(select(retention.TelemetryRetention))}}


@router.get("/v1/admin/drift")
def drift(_: AdminDep, session: SessionDep, group: str, hours: float = 24.0,
          min_fraction: float = 0.0) -> dict[str, Any]:
    if not 0 < hours <= 24 * 90 or not 0 <= min_fraction <= 1:
        raise HTTPException(422, "hours must be in (0, 2160] and min_fraction in [0, 1]")
    members = list(session.scalars(select(Device.id).where(Device.group == group, Device.revoked_at.is_(None))))
    if not members:
        raise HTTPException(404, f"group {group!r} has no enrolled, unrevoked device")
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    verdict = group_drift(group, members, store.drift_alerts(session, members, since), min_fraction=min_fraction,
                          hours=hours)
    return verdict.to_dict()
