"""Rollouts as the admin API, the CLI and the console show them (reads only).

    rollout_summary(row) -> dict                  the rollout, its result once it ended, last decision
    rollout_detail(session, row, now) -> dict     plus gate readings (live while it runs; else those of
                                                  its last decision), each device's version, target
                                                  and status, history
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgegen.fleet import rollout as ro
from edgegen.fleet.inventory import inventory
from edgegen.fleet.rollout_ctl import readings_json, rollout_dict
from edgegen.fleet.rollout_db import RolloutEventRow, RolloutRow, stage_health, to_domain


def rollout_summary(row: RolloutRow) -> dict[str, Any]:
    d = rollout_dict(to_domain(row))
    d.update(last_decision=row.last_decision, created_at=row.created_at.isoformat(),
             updated_at=row.updated_at.isoformat())
    d.pop("baseline", None)
    return d


def rollout_detail(session: Session, row: RolloutRow, now: datetime) -> dict[str, Any]:
    out = rollout_summary(row)
    r = to_domain(row)
    events = list(session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == row.id)
                                  .order_by(RolloutEventRow.id)))
    if r.state is ro.RolloutState.RUNNING:  # what the next tick would read, without acting on it
        health, baseline = stage_health(session, r, row.created_at)
        out["readings"] = readings_json(ro.decide(r, health, now.timestamp(), baseline))
        out["readings_at"] = "now"
    else:  # the readings of the last decision that had any (history)
        last = next((e for e in reversed(events) if e.readings), None)
        out["readings"] = list(last.readings) if last else []
        out["readings_at"] = f"at {last.action} ({last.at.isoformat()[:19]})" if last else None
    inv = {d["id"]: d for d in inventory(session, now) if d["id"] in set(r.devices)}
    members = set(r.members())
    out["devices"] = []
    for dev in r.devices:
        d = inv.get(dev, {})
        out["devices"].append({
            "id": dev, "name": d.get("name"), "member": dev in members, "active_version": d.get("active_version"),
            "target": r.target_for(dev, d.get("active_version")), "status": d.get("status"),
            "status_reason": d.get("status_reason")})
    out["events"] = [{"at": e.at.isoformat(), "action": e.action, "percent": e.percent, "reason": e.reason,
                      "readings": e.readings} for e in events]
    return out
