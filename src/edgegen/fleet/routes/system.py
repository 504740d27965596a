"""Unauthenticated system routes: liveness and the public root metadata chain (TUF-style
``/v1/root/{n}.json``; root metadata is signed, so serving it publicly is safe)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from edgegen.fleet.auth import SessionDep
from edgegen.fleet.db import RootVersion

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/root/{version}.json")
def root_version(version: int, session: SessionDep) -> Response:
    row = session.get(RootVersion, version)
    if row is None:
        raise HTTPException(404, f"no root version {version}")
    return Response(row.envelope, media_type="application/json")
