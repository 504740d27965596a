"""Admin API (``Authorization: Bearer <admin token>``): publish, enrol, revoke, inspect.

    PUT  /v1/admin/blobs/{sha256}            upload a blob (streamed, hash-checked, content-addressed)
    POST /v1/admin/versions                  publish a signed manifest whose blobs are uploaded, and
                                             make the deltas to it from the versions devices run
    GET  /v1/admin/models                    models, their versions and the released one
    POST /v1/admin/root                      publish root v(n+1) (signed by root v(n) and itself)
    POST /v1/admin/enroll-tokens             issue a one-time enrolment token
    GET  /v1/admin/devices                   every device, the version it should run, its status
                                             derived from the latest facts and the reason
    GET  /v1/admin/devices/{id}              one device and its recent events
    PATCH /v1/admin/devices/{id}             set the model a device follows, its group or labels
    POST /v1/admin/devices/{id}/revoke       refuse the device's credential from now on, and put
                                             every certificate issued to it on the CRL
    POST /v1/admin/certificates/{serial}/revoke   put one client certificate (hex serial) on the CRL:
                                             a leaked enrolment bundle, a stolen device key
    GET  /v1/admin/events?device_id=&limit=  device events, newest first
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from edgegen.errors import UserInputError
from edgegen.fleet import enrol
from edgegen.fleet.auth import AdminDep, PlaneDep, SessionDep
from edgegen.fleet.db import Device, DeviceEvent, Model, utcnow
from edgegen.fleet.inventory import device_detail, inventory
from edgegen.fleet.registry import BlobStore, add_root, publish, record_blob
from edgegen.fleet.rollout_db import RolloutPolicy
from edgegen.fleet.routes.device import device_view

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _bad(exc: UserInputError) -> HTTPException:
    return HTTPException(400, str(exc))


@router.put("/blobs/{sha256}", status_code=201)
async def upload_blob(sha256: str, request: Request, _: AdminDep, plane: PlaneDep) -> dict[str, Any]:
    store = BlobStore(plane.blobs_dir)
    try:
        store.path(sha256)
    except UserInputError as exc:
        raise _bad(exc) from exc
    writer = store.begin(max_bytes=plane.config.max_upload_bytes)
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(writer.write, chunk)
        sha, size = await run_in_threadpool(writer.commit, sha256)
    except UserInputError as exc:
        raise _bad(exc) from exc
    finally:
        writer.abort()
    with plane.sessions() as session:
        record_blob(session, sha, size)
        session.commit()
    return {"sha256": sha, "size": size}


@router.post("/versions", status_code=201)
async def publish_version(request: Request, _: AdminDep, plane: PlaneDep) -> dict[str, Any]:
    data = await request.body()

    def work() -> dict[str, Any]:
        with plane.sessions() as session:
            try:
                v = publish(session, data, BlobStore(plane.blobs_dir))
            except UserInputError as exc:
                session.rollback()
                raise _bad(exc) from exc
            session.commit()
            # deltas from the versions devices run, made now: no device request waits for one
            deltas = plane.deltas.prepare(session, v) if plane.deltas is not None else []
            session.commit()
            return {"name": v.model.name, "version": v.version, "sha256": v.sha256, "size": v.size,
                    "deltas": deltas}

    return await run_in_threadpool(work)


@router.get("/models")
def models(_: AdminDep, session: SessionDep) -> list[dict[str, Any]]:
    out = []
    for m in session.scalars(select(Model).order_by(Model.name)):
        pol = session.get(RolloutPolicy, m.name)
        out.append({"name": m.name, "staged": pol.staged if pol else True,
                    "released_version": pol.released_version if pol else None, "versions": [
            {"version": v.version, "sha256": v.sha256, "size": v.size, "architecture": v.architecture,
             "quantization": v.quantization, "expires": v.expires_at.isoformat()} for v in m.versions]})
    return out


@router.post("/root", status_code=201)
async def publish_root(request: Request, _: AdminDep, plane: PlaneDep) -> dict[str, Any]:
    data = await request.body()
    with plane.sessions() as session:
        try:
            root = add_root(session, data)
        except UserInputError as exc:
            raise _bad(exc) from exc
        session.commit()
    return {"version": root.version}


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    group: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ttl_s: float | None = Field(default=None, gt=0)
    note: str = ""


@router.post("/enroll-tokens", status_code=201)
def enroll_token(body: TokenRequest, _: AdminDep, session: SessionDep, plane: PlaneDep) -> dict[str, Any]:
    ttl_s = body.ttl_s or plane.config.enroll_token_ttl_s
    token = enrol.issue_token(session, model_name=body.model, group=body.group, labels=body.labels,
                              ttl_s=ttl_s, note=body.note)
    session.commit()
    out: dict[str, Any] = {"token": token}
    if plane.ca is not None:  # the enrolment bundle: the CA to pin, and (mTLS) a certificate to enrol with
        bundle: dict[str, Any] = {"token": token, "ca_pem": plane.ca.ca_pem.decode()}
        if plane.config.mutual_tls:
            cert, key = plane.ca.issue_client_key(f"enrol:{token.split('.')[0]}", days=ttl_s / 86400)
            bundle.update(enrol_cert_pem=cert.decode(), enrol_key_pem=key.decode())
        out["bundle"] = bundle
    return out


@router.get("/devices")
def devices(_: AdminDep, session: SessionDep) -> list[dict[str, Any]]:
    """Every device with the version it should run and its status derived from the latest facts."""
    return inventory(session, utcnow())


@router.get("/devices/{device_id}")
def device(device_id: str, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    out = device_detail(session, device_id, utcnow())
    if out is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return out


class DevicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    group: str | None = None
    labels: dict[str, str] | None = None


@router.patch("/devices/{device_id}")
def patch_device(device_id: str, body: DevicePatch, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, f"no device {device_id!r}")
    if body.model is not None:
        device.model_name = body.model
    if body.group is not None:
        device.group = body.group
    if body.labels is not None:
        device.set_labels(body.labels)
    session.commit()
    return device_view(device)


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


@router.post("/devices/{device_id}/revoke")
def revoke_device(device_id: str, body: RevokeRequest, _: AdminDep, session: SessionDep,
                  plane: PlaneDep) -> dict[str, Any]:
    try:
        device = enrol.revoke(session, device_id, body.reason)
    except UserInputError as exc:
        raise HTTPException(404, str(exc)) from exc
    if plane.ca is not None:
        plane.ca.revoke_subject(device.id)
    session.commit()
    return device_view(device)


@router.post("/certificates/{serial}/revoke")
def revoke_certificate(serial: str, _: AdminDep, plane: PlaneDep) -> dict[str, Any]:
    if plane.ca is None:
        raise HTTPException(404, "this control plane has no fleet CA")
    try:
        number = int(serial, 16)
    except ValueError as exc:
        raise HTTPException(400, f"not a hexadecimal serial number: {serial!r}") from exc
    if not (plane.ca.dir / "issued" / f"{number:x}.pem").exists():
        raise HTTPException(404, f"the fleet CA issued no client certificate {number:x}")
    plane.ca.revoke_serial(number)
    return {"serial": f"{number:x}", "revoked": True}


@router.get("/events")
def events(_: AdminDep, session: SessionDep, device_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    q = select(DeviceEvent).order_by(DeviceEvent.id.desc()).limit(max(1, min(limit, 5000)))
    if device_id is not None:
        q = q.where(DeviceEvent.device_id == device_id)
    return [
        {"id": e.id, "device_id": e.device_id, "at": e.at.isoformat(), "kind": e.kind, "ok": e.ok,
         "model": e.model_name, "version": e.version, "reason": e.reason, "detail": json.loads(json.dumps(e.detail))}
        for e in session.scalars(q)
    ]
