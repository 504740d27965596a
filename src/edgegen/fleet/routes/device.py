"""Device-facing API (every route needs a device credential, see ``auth.DeviceDep``).

    GET  /v1/device/me                          the device's own record
    GET  /v1/device/desired?adapters=a,b        which model version it should run (and which version
                                                of each extra LoRA adapter stream named), with the
                                                same answer as a ``desired`` statement signed by the
                                                freshness key and valid ``desired_ttl_s`` seconds
                                                (the agent refuses an expired one: freeze)
    GET  /v1/device/manifests/{name}/{version}  the signed manifest, byte for byte as published
    GET  /v1/device/deltas/{name}/{version}?base=SHA   a zstd patch from the installed artifact
                                                (``base``) to that version, made at publish time;
                                                404 at once when none is made yet (queued for the
                                                next devices) or none is smaller than the full transfer
    GET  /v1/device/blobs/{sha256}              an artifact, transfer or delta blob; HTTP Range
    POST /v1/device/report                      an ``EventKind`` report (installed, refused, ...)
    PUT  /v1/device/profile                     the device's profile (``plan.DeviceProfile`` JSON, as
                                                ``edgegen profile`` writes it): rollouts select by it
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from edgegen.fleet.auth import DeviceDep, PlaneDep, SessionDep
from edgegen.fleet.db import DeviceEvent, EventKind
from edgegen.fleet.registry import BlobStore, blob_is_published, current_root, get_version
from edgegen.fleet.signing import DesiredState, sign

router = APIRouter(prefix="/v1/device", tags=["device"])


def device_view(device: Any) -> dict[str, Any]:
    return {
        "id": device.id, "name": device.name, "group": device.group, "labels": device.labels,
        "model": device.model_name, "active_version": device.active_version,
        "active_sha256": device.active_sha256, "status": device.status, "last_error": device.last_error,
        "revoked": device.revoked, "last_seen_at": device.last_seen_at.isoformat() if device.last_seen_at else None,
        "profile": (device.profile or {}).get("name"),
    }


@router.get("/me")
def me(device: DeviceDep) -> dict[str, Any]:
    return device_view(device)


MAX_ADAPTER_STREAMS = 32


@router.get("/desired")
def desired(device: DeviceDep, session: SessionDep, plane: PlaneDep, adapters: str = "") -> dict[str, Any]:
    names = sorted({n.strip() for n in adapters.split(",") if n.strip()})
    if len(names) > MAX_ADAPTER_STREAMS:
        raise HTTPException(400, f"at most {MAX_ADAPTER_STREAMS} adapter streams per device")
    streams: dict[str, int | None] = {}
    for name in names:
        row = plane.adapter_resolver(session, device, name) if plane.adapter_resolver is not None else None
        streams[name] = row.version if row is not None else None
    version = plane.desired_resolver(session, device)
    root = current_root(session)
    out: dict[str, Any] = {
        "model": device.model_name,
        "version": version.version if version is not None else None,
        "manifest_url": (f"/v1/device/manifests/{device.model_name}/{version.version}" if version else None),
        "root_version": root[0].version if root else None,
    }
    if names:
        out["adapters"] = streams
    if plane.freshness_key is not None:
        now = datetime.now(timezone.utc)
        statement = DesiredState(device=device.id, model=out["model"], version=out["version"], issued=now,
                                 expires=now + timedelta(seconds=plane.config.desired_ttl_s), adapters=streams)
        out["statement"] = sign(statement.to_signed(), [plane.freshness_key])
    return out


@router.get("/manifests/{name}/{version}")
def manifest(name: str, version: int, _device: DeviceDep, session: SessionDep) -> Response:
    row = get_version(session, name, version)
    if row is None:
        raise HTTPException(404, f"no version {version} of {name!r}")
    return Response(row.envelope, media_type="application/json")


@router.get("/deltas/{name}/{version}")
def delta(name: str, version: int, base: str, _device: DeviceDep, session: SessionDep,
          plane: PlaneDep) -> dict[str, Any]:
    row = get_version(session, name, version)
    if row is None:
        raise HTTPException(404, f"no version {version} of {name!r}")
    offer = plane.deltas.offer(session, row, base) if plane.deltas is not None else None
    if offer is None:
        raise HTTPException(404, "no delta from that base (not made yet, or not smaller than the full transfer)")
    return offer


@router.get("/blobs/{sha256}")
def blob(sha256: str, _device: DeviceDep, session: SessionDep, plane: PlaneDep) -> FileResponse:
    store = BlobStore(plane.blobs_dir)
    if not blob_is_published(session, sha256) or not store.has(sha256):
        raise HTTPException(404, "no such blob")
    return FileResponse(store.path(sha256), media_type="application/octet-stream")


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: EventKind
    ok: bool = True
    version: int | None = None
    active_version: int | None = None
    active_sha256: str | None = Field(default=None, max_length=64)
    status: str | None = Field(default=None, max_length=40)
    reason: str | None = Field(default=None, max_length=4000)
    detail: dict[str, Any] = Field(default_factory=dict)


@router.post("/report", status_code=201)
def report(body: Report, device: DeviceDep, session: SessionDep) -> dict[str, Any]:
    if len(json.dumps(body.detail)) > 16_000:
        raise HTTPException(413, "report detail too large")
    event = DeviceEvent(device_id=device.id, kind=body.kind.value, ok=body.ok, model_name=device.model_name,
                        version=body.version, reason=body.reason, detail=body.detail)
    session.add(event)
    if body.active_version is not None:
        device.active_version = body.active_version
        device.active_sha256 = body.active_sha256
    if body.status is not None:
        device.status = body.status
    device.last_error = None if body.ok else body.reason
    session.commit()
    return {"id": event.id}


MAX_PROFILE_BYTES = 64_000


@router.put("/profile")
def put_profile(body: dict[str, Any], device: DeviceDep, session: SessionDep) -> dict[str, Any]:
    """Store the device's profile after checking it is one (422 naming the fields that are wrong)."""
    from edgegen.errors import InvalidProfileError
    from edgegen.plan.profile import profile_from_dict

    if len(json.dumps(body)) > MAX_PROFILE_BYTES:
        raise HTTPException(413, "profile too large")
    try:
        prof = profile_from_dict(body, "the device profile")
    except InvalidProfileError as exc:
        raise HTTPException(422, str(exc)) from exc
    device.profile = body
    session.commit()
    return {"profile": prof.name}
