"""Who is calling: FastAPI dependencies for the admin and for enrolled devices.

    SessionDep    a SQLAlchemy ``Session`` for the request (committed by the route, closed after)
    AdminDep      ``Authorization: Bearer <admin token>``; 401 "admin token required" without one,
                  401 "wrong admin token" for a wrong one; or the web console's session
                  cookie with its CSRF header (``console_auth``)
    DeviceDep     ``Authorization: Bearer <device id>.<secret>``; 401 for an unknown or wrong
                  credential, 403 for a revoked device, and on a mutual-TLS control plane 403
                  when the connection's client certificate was not issued to that device
                  (CN = device id): a stolen credential is useless without the device's key;
                  each refusal is recorded as an ``auth_refused`` device event (with the device
                  id when the id is known)
    ClientCertGate  ASGI middleware of a mutual-TLS control plane: every request needs the
                  connection's client certificate (``peer_cert``), not on the fleet CA's CRL

Secrets are compared as sha256 digests with ``hmac.compare_digest``; only digests are stored.
This module does not issue credentials (see ``enrol.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from edgegen.fleet import console_auth
from edgegen.fleet.db import Device, DeviceEvent, EventKind, utcnow
from edgegen.fleet.peer_cert import certificate_name, peer_certificate
from edgegen.fleet.state import ControlPlane

log = logging.getLogger(__name__)

CREDENTIAL_SEP = "."


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


def control_plane(request: Request) -> ControlPlane:
    return request.app.state.fleet


def get_session(request: Request) -> Iterator[Session]:
    with control_plane(request).sessions() as session:
        yield session


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_admin(request: Request) -> None:
    token = _bearer(request)
    if token is None:
        if _console_session(request):  # the web console: its cookie plus the CSRF header
            return
        raise HTTPException(401, "admin token required", headers={"WWW-Authenticate": "Bearer"})
    if not secret_matches(token, control_plane(request).admin_token_digest):
        raise HTTPException(401, "wrong admin token", headers={"WWW-Authenticate": "Bearer"})


def _console_session(request: Request) -> bool:
    """A console login cookie; then the CSRF header must match it (403 otherwise)."""
    cookie = request.cookies.get(console_auth.COOKIE)
    digest = control_plane(request).admin_token_digest
    if not console_auth.session_valid(cookie, digest, time.time()):
        return False
    assert cookie is not None
    if not console_auth.csrf_valid(cookie, digest, request.headers.get(console_auth.CSRF_HEADER)):
        raise HTTPException(403, "console request without a valid CSRF token")
    return True


def _refuse(request: Request, status: int, reason: str, device_id: str | None) -> HTTPException:
    """Record the refusal in its own transaction (the request's session is about to roll back)."""
    with control_plane(request).sessions() as s:
        s.add(DeviceEvent(device_id=device_id, kind=EventKind.AUTH_REFUSED.value, ok=False,
                          reason=reason, detail={"path": request.url.path}))
        s.commit()
    log.info("refused device credential on %s: %s", request.url.path, reason)
    return HTTPException(status, reason, headers={"WWW-Authenticate": "Bearer"})


def require_device(request: Request, session: Annotated[Session, Depends(get_session)]) -> Device:
    token = _bearer(request)
    if token is None:
        raise _refuse(request, 401, "no device credential", None)
    device_id, sep, secret = token.partition(CREDENTIAL_SEP)
    device = session.get(Device, device_id) if sep else None
    if device is None:
        raise _refuse(request, 401, "unknown device credential", None)
    if not secret_matches(secret, device.credential_hash):
        raise _refuse(request, 401, "wrong device credential", device.id)
    if device.revoked:
        raise _refuse(request, 403, f"device {device.id} is revoked: {device.revoked_reason or ''}".rstrip(": "),
                      device.id)
    if control_plane(request).config.mutual_tls:
        cert = peer_certificate(request.scope)
        holder = certificate_name(cert) if cert is not None else None
        if holder != device.id:
            raise _refuse(request, 403, f"the client certificate is issued to {holder!r}, not to device {device.id}",
                          device.id)
    device.last_seen_at = utcnow()
    session.commit()
    return device


class ClientCertGate:
    """Refuse (403) a request whose connection brought no client certificate to the app (a server
    run without ``peer_cert.PeerCertProtocol``: fail closed) or one on the fleet CA's CRL."""

    def __init__(self, app: Any, plane: ControlPlane) -> None:
        self.app, self.plane = app, plane

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            cert = peer_certificate(scope)
            reason = None
            if cert is None:
                reason = "mutual TLS: no client certificate reached the control plane"
            elif self.plane.ca is not None and self.plane.ca.is_revoked(cert):
                reason = f"client certificate {cert.serial_number:x} is revoked"
            if reason is not None:
                log.info("refused connection on %s: %s", scope.get("path"), reason)
                await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


SessionDep = Annotated[Session, Depends(get_session)]
AdminDep = Annotated[None, Depends(require_admin)]
DeviceDep = Annotated[Device, Depends(require_device)]
PlaneDep = Annotated[ControlPlane, Depends(control_plane)]
