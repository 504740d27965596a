"""Unauthenticated system routes: liveness, the public root metadata chain (TUF-style
``/v1/root/{n}.json``; root metadata is signed, so serving it publicly is safe) and the fleet CA's
certificate revocation list (``/v1/crl.pem``, signed by the CA, for TLS terminators in front)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from edgegen.fleet.auth import PlaneDep, SessionDep
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


@router.get("/v1/crl.pem")
def crl(plane: PlaneDep) -> Response:
    if plane.ca is None:
        raise HTTPException(404, "this control plane has no fleet CA")
    return Response(plane.ca.crl(), media_type="application/pkix-crl")
