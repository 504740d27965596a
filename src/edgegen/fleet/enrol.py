"""Enrolment: one-time tokens become per-device credentials; revocation refuses them again.

    issue_token(session, ...)   -> "egt_<id>.<secret>.<root key id>" (only digests are stored);
                                   the root key id pins the device's first trust (see agent.trust)
    enroll(session, token, ...) -> (Device, credential "<device id>.<secret>"); the token is spent
                                   atomically, so two devices racing with one token get one device
    revoke(session, device_id)  -> the device's every later call is refused (403)

This module does not authenticate requests (``auth.py``) or touch the network.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from edgegen.errors import AuthError, UnknownDeviceError
from edgegen.fleet.auth import CREDENTIAL_SEP, digest, secret_matches
from edgegen.fleet.db import Device, DeviceEvent, EnrollToken, EventKind, utcnow
from edgegen.fleet.registry import current_root

TOKEN_PREFIX = "egt_"


def parse_token(token: str) -> tuple[str, str, str | None]:
    """(token id, secret, pinned root key id or None)."""
    parts = token.strip().split(".")
    if len(parts) not in (2, 3) or not parts[0].startswith(TOKEN_PREFIX) or not parts[1]:
        raise AuthError("malformed enrolment token")
    return parts[0], parts[1], (parts[2] if len(parts) == 3 else None)


def issue_token(
    session: Session,
    *,
    model_name: str | None = None,
    group: str | None = None,
    labels: dict[str, str] | None = None,
    ttl_s: float = 24 * 3600.0,
    note: str = "",
) -> str:
    root = current_root(session)
    token_id = TOKEN_PREFIX + secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    session.add(EnrollToken(
        id=token_id, secret_hash=digest(secret), expires_at=utcnow() + timedelta(seconds=ttl_s),
        model_name=model_name, group=group, labels=dict(labels or {}), note=note,
    ))
    session.flush()
    pin = root[0].roles["root"].keyids[0] if root is not None else None
    return f"{token_id}.{secret}" + (f".{pin}" if pin else "")


def enroll(session: Session, token: str, *, name: str = "", labels: dict[str, str] | None = None) -> tuple[Device, str]:
    token_id, secret, _pin = parse_token(token)
    row = session.get(EnrollToken, token_id)
    now = utcnow()
    if row is None or not secret_matches(secret, row.secret_hash):
        raise AuthError("unknown enrolment token")
    if row.used_at is not None:
        raise AuthError("enrolment token already used")
    if now >= row.expires_at:
        raise AuthError("enrolment token expired")
    spent = session.execute(
        update(EnrollToken).where(EnrollToken.id == token_id, EnrollToken.used_at.is_(None)).values(used_at=now)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise AuthError("enrolment token already used")
    device_secret = secrets.token_urlsafe(32)
    device = Device(
        id="dev_" + secrets.token_hex(8), name=name, group=row.group, model_name=row.model_name,
        credential_hash=digest(device_secret), enroll_token_id=token_id,
    )
    device.set_labels({**row.labels, **(labels or {})})
    session.add(device)
    session.flush()
    session.add(DeviceEvent(device_id=device.id, kind=EventKind.ENROLLED.value, model_name=device.model_name,
                            detail={"token": token_id, "name": name}))
    return device, f"{device.id}{CREDENTIAL_SEP}{device_secret}"


def revoke(session: Session, device_id: str, reason: str = "") -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise UnknownDeviceError(f"no device {device_id!r}")
    if device.revoked_at is None:
        device.revoked_at = utcnow()
        device.revoked_reason = reason or "revoked by admin"
        session.add(DeviceEvent(device_id=device.id, kind=EventKind.REVOKED.value, ok=False,
                                reason=device.revoked_reason))
    return device
