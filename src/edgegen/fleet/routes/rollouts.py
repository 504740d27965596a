"""Rollout admin API (``Authorization: Bearer <admin token>``), and the rollout loop's lifespan.

    GET  /v1/admin/rollouts/plan?model=&group=&version=   what a rollout would start from: the group's
                                                 devices, the version they run, that version's
                                                 signed manifest (to sign a rollback copy of it)
                                                 and the next free version number
    POST /v1/admin/rollouts                      create (stages, gates, rollback version, bake time)
    GET  /v1/admin/rollouts[?model=]             every rollout, newest first
    GET  /v1/admin/rollouts/{id}                 one rollout, its members' versions and its history
    POST /v1/admin/rollouts/{id}/pause|resume|abort
    POST /v1/admin/rollouts/tick                 evaluate running rollouts now (besides the loop)
    PUT  /v1/admin/rollouts/policy/{model}       ``{"staged": true}``: new versions of the model
                                                 ship only through rollouts (set by the first rollout)

Including this router makes the control plane rollout-aware (``create_app`` calls the router's
``install_plane`` hook: the rollout policy becomes the desired-version resolver even when the app
runs without lifespan events), and its lifespan runs the evaluation loop every
``EDGEGEN_FLEET__ROLLOUT_INTERVAL_S`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edgegen.config import get_settings
from edgegen.errors import UserInputError
from edgegen.fleet.auth import AdminDep, PlaneDep, SessionDep
from edgegen.fleet.db import Device
from edgegen.fleet.registry import get_version, latest_version_number
from edgegen.fleet.rollout import DEFAULT_GATES, Gate, parse_stages
from edgegen.fleet.rollout_ctl import decision_dict, install, rollout_dict, start_loop, stop_loop
from edgegen.fleet.rollout_db import (
    RolloutEventRow,
    RolloutRow,
    RolloutSpec,
    create_rollout,
    desired_number,
    select_devices,
    set_staged,
    to_domain,
)

INTERVAL_KEY = "fleet_ii.rollout_interval_s"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    plane = app.state.fleet
    install(plane)
    start_loop(plane, float(plane.extras.get(INTERVAL_KEY, get_settings().fleet.rollout_interval_s)))
    try:
        yield
    finally:
        stop_loop(plane)


router = APIRouter(prefix="/v1/admin/rollouts", tags=["rollouts"], lifespan=lifespan)
router.install_plane = install  # type: ignore[attr-defined]  # create_app calls it: no lifespan needed


def _bad(exc: UserInputError) -> HTTPException:
    return HTTPException(400, str(exc))


@router.get("/plan")
def plan(model: str, group: str, version: int, _: AdminDep, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    install(plane)
    try:
        set_staged(session, model, True, below=version)  # as create would; rolled back below
        devices = select_devices(session, model, group)
        now = {d.id: desired_number(session, d) for d in devices}
        counts: dict[int, int] = {}
        for v in now.values():
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        previous = max(counts, key=lambda v: (counts[v], v)) if counts else None
        prev_row = get_version(session, model, previous) if previous is not None else None
        return {"model": model, "group": group, "devices": sorted(now), "previous_version": previous,
                "previous_manifest": prev_row.envelope if prev_row else None,
                "next_version": latest_version_number(session, model) + 1}
    finally:
        session.rollback()  # a plan changes nothing


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    version: int
    group: str = "all"
    stages: list[int] | str = Field(default="10,50,100")
    gates: list[str] | None = None
    rollback_version: int | None = None
    bake_s: float = 0.0
    settle_fraction: float = 1.0


@router.post("", status_code=201)
def create(body: RolloutRequest, _: AdminDep, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    install(plane)
    try:
        gates = tuple(Gate.parse(g) for g in body.gates) if body.gates is not None else DEFAULT_GATES
        spec = RolloutSpec(model=body.model, version=body.version, group=body.group,
                           stages=parse_stages(body.stages), gates=gates,
                           rollback_version=body.rollback_version, bake_s=body.bake_s,
                           settle_fraction=body.settle_fraction)
        r = create_rollout(session, spec)
    except UserInputError as exc:
        session.rollback()
        raise _bad(exc) from exc
    session.commit()
    return rollout_dict(r)


def _summary(row: RolloutRow) -> dict[str, Any]:
    d = rollout_dict(to_domain(row))
    d.update(last_decision=row.last_decision, created_at=row.created_at.isoformat(),
             updated_at=row.updated_at.isoformat())
    d.pop("baseline", None)
    return d


@router.get("")
def list_rollouts(_: AdminDep, session: SessionDep, model: str | None = None) -> list[dict[str, Any]]:
    q = select(RolloutRow).order_by(RolloutRow.id.desc())
    if model is not None:
        q = q.where(RolloutRow.model == model)
    return [_summary(r) for r in session.scalars(q)]


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    staged: bool


@router.put("/policy/{model}")
def put_policy(model: str, body: PolicyRequest, _: AdminDep, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    install(plane)
    pol = set_staged(session, model, body.staged)
    session.commit()
    return {"model": model, "staged": pol.staged, "released_version": pol.released_version}


@router.post("/tick")
def tick(_: AdminDep, plane: PlaneDep) -> list[dict[str, Any]]:
    controller = install(plane)
    return [{"rollout": rid, **decision_dict(d)} for rid, d in controller.tick()]


@router.get("/{rollout_id}")
def show(rollout_id: int, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    out = _summary(row)
    r = to_domain(row)
    devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(list(r.devices))))}
    members = set(r.members())
    out["devices"] = [
        {"id": d, "member": d in members, "active_version": devices[d].active_version if d in devices else None,
         "target": r.target_for(d, devices[d].active_version if d in devices else None),
         "status": devices[d].status if d in devices else None}
        for d in r.devices
    ]
    out["events"] = [
        {"at": e.at.isoformat(), "action": e.action, "percent": e.percent, "reason": e.reason,
         "readings": e.readings}
        for e in session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id)
                                 .order_by(RolloutEventRow.id))
    ]
    return out


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


@router.post("/{rollout_id}/{action}")
def act(rollout_id: int, action: str, body: ActionRequest, _: AdminDep, session: SessionDep,
        plane: PlaneDep) -> dict[str, Any]:
    if action not in ("pause", "resume", "abort"):
        raise HTTPException(404, f"no rollout action {action!r}")
    if session.get(RolloutRow, rollout_id) is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    session.close()
    try:
        r = install(plane).act(rollout_id, action, body.reason)
    except UserInputError as exc:
        raise _bad(exc) from exc
    return rollout_dict(r)
