"""What the console's pages show besides the overview (``dashboard.py``): plain dicts for Jinja2.

    devices_page(session, now)              inventory with labels, status and why, telemetry counts
    device_page(session, device_id, now)    one device: versions, status, events, logs, telemetry, drift
    releases_page(session)                  models and LoRA adapters (the manifest's ``kind``), versions
                                            with their signed manifests, the released one
    rollouts_page(session, now)             every rollout (newest first) and what the create form offers
    rollout_page(session, rollout_id, now)  stages, gates with live readings, devices, history
    drift_page(session, now)                drift alerts of the last day

Reads only; actions go through the admin API (``routes/admin.py``, ``routes/rollouts.py``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgegen.fleet.dashboard import ONLINE_WINDOW, _ago, _devices, _drift, _rollouts
from edgegen.fleet.db import Device, Model
from edgegen.fleet.inventory import device_detail, inventory
from edgegen.fleet.rollout import DEFAULT_GATES, GATE_GRAMMAR, GateMetric, NoTraffic, stage_size
from edgegen.fleet.rollout_db import RolloutPolicy, RolloutRow, to_domain
from edgegen.fleet.rollout_view import rollout_detail
from edgegen.telemetry import store
from edgegen.telemetry.events import TelemetryKind


def devices_page(session: Session, now: datetime) -> dict[str, Any]:
    tele = {d["id"]: d for d in _devices(session, now)}
    rows = []
    for d in inventory(session, now):
        t = tele.get(d["id"], {})
        rows.append({**d, "online": t.get("online", False), "last_seen": t.get("last_seen", "never"),
                     "events": t.get("events", 0), "dropped": t.get("dropped", 0), "rss_mb": t.get("rss_mb")})
    return {"devices": rows}


def device_page(session: Session, device_id: str, now: datetime) -> dict[str, Any] | None:
    d = device_detail(session, device_id, now)
    if d is None:
        return None
    row = session.get(Device, device_id)
    assert row is not None
    d["online"] = row.last_seen_at is not None and now - row.last_seen_at <= ONLINE_WINDOW and not row.revoked
    d["last_seen"] = _ago(now, row.last_seen_at)
    d["streams"] = [{"stream": s.stream, "stored": s.stored, "duplicates": s.duplicates, "dropped": s.dropped_total,
                     "last_event": _ago(now, s.last_event_at), "version": s.model_version,
                     "rss_mb": s.rss_bytes / 2**20 if s.rss_bytes else None}
                    for s in store.streams(session) if s.device_id == device_id]
    since = now - timedelta(hours=1)
    win = store.request_window(session, device_id, None, since)
    d["requests_1h"] = {"requests": win.requests, "errors": win.errors,
                        "p95_ms": sorted(win.latencies_ms)[int(0.95 * (len(win.latencies_ms) - 1))]
                        if win.latencies_ms else None}
    d["logs"] = [{"at": _ago(now, e.at), "level": e.body.get("level", ""), "message": e.body.get("message", "")}
                 for e in store.recent(session, TelemetryKind.LOG, now - timedelta(days=1), limit=500)
                 if e.device_id == device_id][:20]
    d["drift"] = [a for a in _drift(session, now, {}) if a["device_id"] == device_id]
    return d


def releases_page(session: Session) -> dict[str, Any]:
    models = []
    for m in session.scalars(select(Model).order_by(Model.name)):
        pol = session.get(RolloutPolicy, m.name)
        released = pol.released_version if pol else None
        versions = []
        for v in sorted(m.versions, key=lambda v: v.version, reverse=True):
            signed = json.loads(v.envelope).get("signed", {})
            versions.append({"kind": signed.get("kind", "model"), "base_sha256": signed.get("base_sha256"),
                             "version": v.version, "sha256": v.sha256, "size": v.size,
                             "architecture": v.architecture, "quantization": v.quantization,
                             "published": v.published_at.strftime("%Y-%m-%d %H:%M"),
                             "expires": v.expires_at.strftime("%Y-%m-%d"), "released": v.version == released,
                             "manifest": json.dumps(json.loads(v.envelope), indent=2)})
        models.append({"name": m.name, "staged": pol.staged if pol else True, "released": released,
                       "versions": versions})
    adapters = [{"name": m["name"], **v} for m in models for v in m["versions"] if v["kind"] == "adapter"]
    return {"models": models, "adapters": adapters}


def rollouts_page(session: Session, now: datetime) -> dict[str, Any]:
    tele = {d["id"]: d["version"] for d in _devices(session, now)}
    groups = sorted({d.group for d in session.scalars(select(Device)) if d.group})
    models = releases_page(session)["models"]
    return {"rollouts": _rollouts(session, tele, limit=50), "groups": groups, "models": models,
            "default_gates": [str(g) for g in DEFAULT_GATES], "metrics": [m.value for m in GateMetric],
            "grammar": GATE_GRAMMAR, "no_traffic": [p.value for p in NoTraffic]}


def rollout_page(session: Session, rollout_id: int, now: datetime) -> dict[str, Any] | None:
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        return None
    r = to_domain(row)
    out = rollout_detail(session, row, now)
    out["stage_bars"] = [{"percent": p, "devices": stage_size(len(r.devices), p),
                          "status": ("done" if i < r.stage_index or r.state.value == "completed" else
                                     "current" if i == r.stage_index else "pending")}
                         for i, p in enumerate(r.stages)]
    return out


def drift_page(session: Session, now: datetime) -> dict[str, Any]:
    names = {d.id: d.name or d.id for d in session.scalars(select(Device))}
    return {"drift": _drift(session, now, names)}
