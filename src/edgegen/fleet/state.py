"""The control plane's process-wide state, as routes see it through ``request.app.state.fleet``.

    ControlPlaneConfig   where the data lives (db URL, data dir), the admin token, limits
    ControlPlane         engine, session factory, blob store, and the desired-version policy seam
    DesiredResolver      ``(session, device) -> ModelVersion | None``: which version a device should
                         run. The default follows the newest published version of the device's model;
                         Fleet II (rollouts) replaces it with ``plane.desired_resolver = ...``.

This module opens no sockets and starts no threads.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from edgegen.fleet.db import Device, Model, ModelVersion

DesiredResolver = Callable[[Session, Device], "ModelVersion | None"]


def latest_version(session: Session, device: Device) -> ModelVersion | None:
    """Default policy: the highest published version of the model the device follows."""
    if not device.model_name:
        return None
    return session.scalars(
        select(ModelVersion)
        .join(Model)
        .where(Model.name == device.model_name)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    ).first()


@dataclass
class ControlPlaneConfig:
    data_dir: Path
    db_url: str | None = None  # None: sqlite file in data_dir
    admin_token: str | None = None  # None: read or create <data_dir>/admin_token (0600)
    keys_dir: Path | None = None  # root metadata files to import at startup: <keys_dir>/root/N.root.json
    enroll_token_ttl_s: float = 24 * 3600.0
    max_upload_bytes: int = 8 * 1024**3

    @classmethod
    def from_settings(cls, settings: object, **overrides: object) -> ControlPlaneConfig:
        """Defaults from ``Settings.fleet`` (``EDGEGEN_FLEET__*``), then explicit overrides."""
        fleet = getattr(settings, "fleet", None)
        home = Path(getattr(settings, "home", Path.home() / ".cache" / "edgegen"))
        kw: dict[str, object] = {
            "data_dir": getattr(fleet, "data_dir", None) or home / "fleet",
            "db_url": getattr(fleet, "db_url", None),
            "admin_token": getattr(fleet, "admin_token", None),
            "max_upload_bytes": getattr(fleet, "max_download_bytes", cls.max_upload_bytes),
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        kw["data_dir"] = Path(kw["data_dir"])  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]


def read_or_create_secret(path: Path) -> str:
    """A secret kept in a 0600 file, created on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


@dataclass
class ControlPlane:
    config: ControlPlaneConfig
    engine: Engine
    sessions: sessionmaker
    admin_token_digest: str
    blobs_dir: Path
    desired_resolver: DesiredResolver = latest_version
    extras: dict[str, object] = field(default_factory=dict)  # room for Fleet II services
