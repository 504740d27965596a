"""Rollout admin API (``Authorization: Bearer <admin token>``) over ``plane.rollouts``.

    GET  /v1/admin/rollouts/plan?model=&group=&version=   what a rollout would start from: the group's
                                                 devices, the version they run, that version's
                                                 signed manifest (to sign a rollback copy of it)
                                                 and the next free version number
    POST /v1/admin/rollouts                      create (stages, gates, rollback version, bake time)
    GET  /v1/admin/rollouts[?model=]             every rollout, newest first
    GET  /v1/admin/rollouts/{id}                 one rollout, its members' versions and its history
    POST /v1/admin/rollouts/{id}/pause|resume|abort
    POST /v1/admin/rollouts/tick                 evaluate running rollouts now (besides the loop)
    PUT  /v1/admin/rollouts/policy/{model}       ``{"staged": false}``: devices outside rollouts follow
                                                 the newest published version (live publishing, opt-in);
                                                 ``true`` (the default): new versions ship only
                                                 through rollouts or an explicit release
    POST /v1/admin/rollouts/release/{model}      ``{"version": N}``: devices outside rollouts run N now

The control plane is always rollout-aware (``app.open_control_plane`` wires the rollout policy as
the desired-version resolver); the app's lifespan runs the evaluation loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edgegen.errors import UserInputError
from edgegen.fleet.auth import AdminDep, PlaneDep, SessionDep
from edgegen.fleet.db import utcnow
from edgegen.fleet.registry import get_version, latest_version_number
from edgegen.fleet.rollout import NoTraffic, merge_gates, parse_stages
from edgegen.fleet.rollout_ctl import decision_dict, rollout_dict
from edgegen.fleet.rollout_db import (
    RolloutRow,
    RolloutSpec,
    create_rollout,
    precheck,
    release_now,
    set_staged,
)
from edgegen.fleet.rollout_view import rollout_detail, rollout_summary

router = APIRouter(prefix="/v1/admin/rollouts", tags=["rollouts"])


def _bad(exc: UserInputError) -> HTTPException:
    return HTTPException(400, str(exc))


@router.get("/plan")
def plan(model: str, group: str, version: int, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    try:
        try:  # the checks create will make, before the operator signs a rollback version for nothing
            _, now = precheck(session, model, version, group)
        except UserInputError as exc:
            raise _bad(exc) from exc
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
    gates: list[str] | None = None  # merged into the defaults (``rollout.merge_gates``)
    rollback_version: int | None = None
    bake_s: float = 0.0
    settle_fraction: float = 1.0
    no_traffic_s: float = 600.0
    on_no_traffic: NoTraffic = NoTraffic.ADVANCE


@router.post("", status_code=201)
def create(body: RolloutRequest, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    try:
        spec = RolloutSpec(model=body.model, version=body.version, group=body.group,
                           stages=parse_stages(body.stages), gates=merge_gates(body.gates),
                           rollback_version=body.rollback_version, bake_s=body.bake_s,
                           settle_fraction=body.settle_fraction, no_traffic_s=body.no_traffic_s,
                           on_no_traffic=body.on_no_traffic)
        r = create_rollout(session, spec)
    except UserInputError as exc:
        session.rollback()
        raise _bad(exc) from exc
    session.commit()
    return rollout_dict(r)


@router.get("")
def list_rollouts(_: AdminDep, session: SessionDep, model: str | None = None) -> list[dict[str, Any]]:
    q = select(RolloutRow).order_by(RolloutRow.id.desc())
    if model is not None:
        q = q.where(RolloutRow.model == model)
    return [rollout_summary(r) for r in session.scalars(q)]


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    staged: bool


@router.put("/policy/{model}")
def put_policy(model: str, body: PolicyRequest, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    pol = set_staged(session, model, body.staged)
    session.commit()
    return {"model": model, "staged": pol.staged, "released_version": pol.released_version}


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int


@router.post("/release/{model}")
def release(model: str, body: ReleaseRequest, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    """Every device of ``model`` outside a rollout runs ``version`` from now on (``--to all --now``)."""
    try:
        pol = release_now(session, model, body.version)
    except UserInputError as exc:
        session.rollback()
        raise _bad(exc) from exc
    session.commit()
    return {"model": model, "staged": pol.staged, "released_version": pol.released_version}


@router.post("/tick")
def tick(_: AdminDep, plane: PlaneDep) -> list[dict[str, Any]]:
    return [{"rollout": rid, **decision_dict(d)} for rid, d in plane.rollouts.tick()]


@router.get("/{rollout_id}")
def show(rollout_id: int, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    return rollout_detail(session, row, utcnow())


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
        r = plane.rollouts.act(rollout_id, action, body.reason)
    except UserInputError as exc:
        raise _bad(exc) from exc
    return rollout_dict(r)
