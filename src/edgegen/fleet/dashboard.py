"""What the console's overview shows, gathered from the database into plain dicts (rendering is
Jinja2's; the other pages' data is in ``fleet/console.py``).

    dashboard_view(session, now) -> dict
        devices     id, name, group, model, version, status, online, last seen, telemetry counts
        rollouts    newest first: version, state, stages with the current one marked, members on
                    the new version while it runs, its result once it ended, last decision, history
        charts      inline SVG: requests per minute, p95 latency and p95 TTFT per minute by version
        drift       recent drift alerts (windows whose comparison with the reference drifted)
        logs        recent remote log records

A device is *online* when the control plane heard from it in the last ``ONLINE_WINDOW``.
This module renders nothing and serves nothing (``routes/dashboard.py`` does).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgegen.fleet.charts import Series, line_chart, minute_series, p95
from edgegen.fleet.db import Device
from edgegen.fleet.rollout import result as ro_result
from edgegen.fleet.rollout import stage_size
from edgegen.fleet.rollout_db import RolloutEventRow, RolloutRow, to_domain
from edgegen.telemetry import store
from edgegen.telemetry.events import TelemetryKind

ONLINE_WINDOW = timedelta(minutes=2)
CHART_MINUTES = 30


def _ago(now: datetime, t: datetime | None) -> str:
    if t is None:
        return "never"
    s = max(0, int((now - t).total_seconds()))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def _devices(session: Session, now: datetime) -> list[dict[str, Any]]:
    streams: dict[str, list[Any]] = defaultdict(list)
    for s in store.streams(session):
        streams[s.device_id].append(s)
    out = []
    for d in session.scalars(select(Device).order_by(Device.name, Device.id)):
        st = streams.get(d.id, [])
        out.append({
            "id": d.id, "name": d.name or d.id, "group": d.group or "", "model": d.model_name or "",
            "version": d.active_version, "status": d.status or "", "revoked": d.revoked,
            "online": d.last_seen_at is not None and now - d.last_seen_at <= ONLINE_WINDOW and not d.revoked,
            "last_seen": _ago(now, d.last_seen_at), "last_error": d.last_error or "",
            "events": sum(s.stored for s in st), "dropped": sum(s.dropped_total for s in st),
            "rss_mb": (max(s.rss_bytes for s in st if s.rss_bytes) / 2**20) if any(s.rss_bytes for s in st) else None,
        })
    return out


def _rollouts(session: Session, versions: dict[str, int | None], limit: int = 10) -> list[dict[str, Any]]:
    out = []
    for row in session.scalars(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit)):
        r = to_domain(row)
        members = r.members()
        on = sum(1 for m in members if versions.get(m) == r.version)
        stages = [{"percent": p, "devices": stage_size(len(r.devices), p),
                   "status": ("done" if i < r.stage_index or r.state.value == "completed" else
                              "current" if i == r.stage_index else "pending")} for i, p in enumerate(r.stages)]
        events = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == r.id)
                                 .order_by(RolloutEventRow.id.desc()).limit(6))
        out.append({
            "result": ro_result(r),
            "id": r.id, "model": r.model, "version": r.version, "previous": r.previous_version,
            "rollback": r.rollback_version, "group": r.group, "state": r.state.value, "percent": r.percent,
            "stages": stages, "members": len(members), "on_target": on, "devices": len(r.devices),
            "gates": [str(g) for g in r.gates], "reason": r.reason, "last_decision": row.last_decision,
            "events": [{"at": e.at.strftime("%H:%M:%S"), "action": e.action, "percent": e.percent,
                        "reason": e.reason} for e in events],
        })
    return out


def _charts(session: Session, now: datetime) -> list[str]:
    start = now - timedelta(minutes=CHART_MINUTES)
    rows = store.recent(session, TelemetryKind.REQUEST, start)
    t0 = start.timestamp()
    by_version: dict[str, list[Any]] = defaultdict(list)
    for e in rows:
        by_version[f"v{e.model_version}" if e.model_version is not None else "v?"].append(e)
    order = sorted(by_version, key=lambda k: (len(k), k))
    requests = [Series(k, minute_series([(e.at.timestamp(), 1.0) for e in by_version[k]], t0, CHART_MINUTES))
                for k in order]
    latency = [Series(k, minute_series([(e.at.timestamp(), e.latency_ms) for e in by_version[k]
                                        if e.latency_ms is not None], t0, CHART_MINUTES, p95)) for k in order]
    ttft = [Series(k, minute_series([(e.at.timestamp(), e.ttft_ms) for e in by_version[k]
                                     if e.ttft_ms is not None], t0, CHART_MINUTES, p95)) for k in order]
    return [
        line_chart("Requests per minute", requests, chart_id="chart-requests"),
        line_chart("p95 request latency", latency, unit=" ms", chart_id="chart-latency"),
        line_chart("p95 time to first token", ttft, unit=" ms", chart_id="chart-ttft"),
    ]


def _drift(session: Session, now: datetime, names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for e in store.recent(session, TelemetryKind.DRIFT, now - timedelta(days=1), limit=500):
        if e.body.get("drift"):
            out.append({"device": names.get(e.device_id, e.device_id), "device_id": e.device_id,
                        "at": _ago(now, e.at), "version": e.model_version,
                        "window": e.body.get("window"), "reasons": e.body.get("reasons", "")})
    return out[:50]


def _logs(session: Session, now: datetime, names: dict[str, str]) -> list[dict[str, Any]]:
    return [{"device": names.get(e.device_id, e.device_id), "at": _ago(now, e.at), "level": e.body.get("level", ""),
             "logger": e.body.get("logger", ""), "message": e.body.get("message", "")}
            for e in store.recent(session, TelemetryKind.LOG, now - timedelta(days=1), limit=30)]


def dashboard_view(session: Session, now: datetime) -> dict[str, Any]:
    devices = _devices(session, now)
    versions = {d["id"]: d["version"] for d in devices}
    names = {d["id"]: d["name"] for d in devices}
    rollouts = _rollouts(session, versions)
    drift = _drift(session, now, names)
    return {
        "now": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "summary": {"devices": len(devices), "online": sum(d["online"] for d in devices),
                    "rollouts_running": sum(r["state"] == "running" for r in rollouts),
                    "drift_alerts": len(drift)},
        "devices": devices, "rollouts": rollouts, "charts": _charts(session, now), "drift": drift,
        "logs": _logs(session, now, names), "chart_minutes": CHART_MINUTES,
    }
