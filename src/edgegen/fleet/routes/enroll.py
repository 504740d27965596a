"""``POST /v1/enroll``: a one-time enrolment token in, a device credential and the root chain out.

With a fleet CA and a ``csr`` in the request, the answer also carries the device's client
certificate (CN = device id) for mutual TLS; the device's private key never leaves the device."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from edgegen.errors import AuthError, UserInputError
from edgegen.fleet import enrol
from edgegen.fleet.auth import PlaneDep, SessionDep
from edgegen.fleet.registry import root_chain

router = APIRouter(tags=["enrolment"])


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(max_length=512)
    name: str = Field(default="", max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    csr: str | None = Field(default=None, max_length=8192)  # PEM: the device's own key, for mTLS


@router.post("/v1/enroll", status_code=201)
def enroll_device(body: EnrollRequest, session: SessionDep, plane: PlaneDep) -> dict:
    chain = root_chain(session)
    if not chain:
        raise HTTPException(503, "the control plane has no root metadata yet")
    try:
        device, credential = enrol.enroll(session, body.token, name=body.name, labels=body.labels)
    except AuthError as exc:
        session.rollback()
        raise HTTPException(401, str(exc)) from exc
    cert = None
    if body.csr is not None and plane.ca is not None:
        try:
            cert = plane.ca.issue_client(body.csr, device.id).decode()
        except UserInputError as exc:
            session.rollback()
            raise HTTPException(400, str(exc)) from exc
    session.commit()
    return {
        "device_id": device.id,
        "credential": credential,
        "model": device.model_name,
        "root_chain": [json.loads(e) for e in chain],
        "device_cert_pem": cert,
    }
