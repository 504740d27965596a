"""The device inventory as the admin API, the CLI and the console show it: each device's record,
the version it should run, and its status derived from the latest facts (``fleet/status.py``).

    inventory(session, now) -> list[dict]          every device, oldest enrolment first
    device_detail(session, device_id, now) -> dict one device with its recent events

Reads only; the desired version comes from the same rollout policy devices are answered with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgegen.fleet.db import Device, DeviceEvent, EventKind
from edgegen.fleet.rollout_db import desired_number
from edgegen.fleet.status import DeviceFacts, LastReport, device_status

# reports about updates; enrolment, revocation and refused credentials are not a device's state
UPDATE_KINDS = tuple(k.value for k in EventKind
                     if k not in (EventKind.ENROLLED, EventKind.REVOKED, EventKind.AUTH_REFUSED))


def last_reports(session: Session, device_ids: list[str]) -> dict[str, LastReport]:
    if not device_ids:
        return {}
    newest = (select(DeviceEvent.device_id, func.max(DeviceEvent.id).label("id"))
              .where(DeviceEvent.device_id.in_(device_ids), DeviceEvent.kind.in_(UPDATE_KINDS))
              .group_by(DeviceEvent.device_id).subquery())
    rows = session.scalars(select(DeviceEvent).join(newest, DeviceEvent.id == newest.c.id))
    return {e.device_id: LastReport(e.kind, e.ok, e.version, e.reason, e.at) for e in rows if e.device_id}


def view(d: Device, desired: int | None, report: LastReport | None, now: datetime) -> dict[str, Any]:
    st = device_status(DeviceFacts(
        active_version=d.active_version, desired_version=desired, revoked=d.revoked,
        last_seen_at=d.last_seen_at, last_report=report, now=now, revoked_reason=d.revoked_reason))
    return {
        "id": d.id, "name": d.name, "group": d.group, "labels": d.labels, "model": d.model_name,
        "profile": (d.profile or {}).get("name"),
        "active_version": d.active_version, "desired_version": desired, "active_sha256": d.active_sha256,
        "status": st.state.value, "status_reason": st.reason, "revoked": d.revoked,
        "last_seen_at": d.last_seen_at.isoformat() if d.last_seen_at else None,
        "last_report": ({"kind": report.kind, "ok": report.ok, "version": report.version,
                         "reason": report.reason, "at": report.at.isoformat()} if report else None),
    }


def inventory(session: Session, now: datetime) -> list[dict[str, Any]]:
    devices = list(session.scalars(select(Device).order_by(Device.created_at, Device.id)))
    reports = last_reports(session, [d.id for d in devices])
    return [view(d, None if d.revoked else desired_number(session, d), reports.get(d.id), now) for d in devices]


def device_detail(session: Session, device_id: str, now: datetime, events: int = 30) -> dict[str, Any] | None:
    d = session.get(Device, device_id)
    if d is None:
        return None
    out = view(d, None if d.revoked else desired_number(session, d), last_reports(session, [d.id]).get(d.id), now)
    out["events"] = [
        {"at": e.at.isoformat(), "kind": e.kind, "ok": e.ok, "version": e.version, "reason": e.reason}
        for e in session.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                                 .order_by(DeviceEvent.id.desc()).limit(events))]
    return out
