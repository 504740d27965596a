"""The control plane's process-wide state, as routes see it through ``request.app.state.fleet``.

    ControlPlaneConfig   where the data lives (db URL, data dir), the admin token, limits
    ControlPlane         engine, session factory, blob store, the desired-version policy and the
                         rollout controller; built field by field in ``app.open_control_plane``
    DesiredResolver      ``(session, device) -> ModelVersion | None``: which version a device should
                         run. ``latest_version`` follows the newest published version of the device's
                         model; the control plane runs ``rollout_db.rollout_resolver`` (rollouts).
    AdapterResolver      ``(session, device, name) -> ModelVersion | None``: the version of an extra
                         adapter stream the device serves beside its model (``rollout_db.adapter_resolver``)

This module opens no sockets and starts no threads.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from edgegen.config import get_settings
from edgegen.fleet.db import Device, Model, ModelVersion
from edgegen.fleet.signing import SigningKey
from edgegen.telemetry.retention import RetentionPolicy

if TYPE_CHECKING:
    from edgegen.fleet.deltas import DeltaService
    from edgegen.fleet.rollout_ctl import ControllerThread, RolloutController
    from edgegen.fleet.tls import FleetCA

DesiredResolver = Callable[[Session, Device], "ModelVersion | None"]
AdapterResolver = Callable[[Session, Device, str], "ModelVersion | None"]  # (session, device, adapter stream)


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
    # seconds between rollout evaluations in the app's lifespan; 0: no background loop (tests tick)
    rollout_interval_s: float = field(default_factory=lambda: get_settings().fleet.rollout_interval_s)
    # the freshness role's online key (None: <keys_dir>/freshness.key when present) and how long a
    # signed desired-state statement stays valid
    freshness_key: Path | None = None
    desired_ttl_s: float = field(default_factory=lambda: get_settings().fleet.desired_ttl_s)
    # serving requires a client certificate from the fleet CA on every connection (mTLS)
    mutual_tls: bool = False
    delta_level: int = 9  # zstd level of the deltas made for devices (bench/delta_update.py: 19 takes minutes)
    # raw telemetry kept per device (by receipt age and count), applied every retention_interval_s
    retention: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(
        get_settings().fleet.telemetry_max_age_days * 86400.0, get_settings().fleet.telemetry_max_events_per_device))
    retention_interval_s: float = 3600.0

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
    desired_resolver: DesiredResolver
    rollouts: RolloutController
    adapter_resolver: AdapterResolver | None = None  # None: devices get no extra adapter streams
    freshness_key: SigningKey | None = None  # signs desired-state statements (None: unsigned hints)
    ca: FleetCA | None = None  # the fleet CA (TLS): enrolment bundles and device certificates
    deltas: DeltaService | None = None  # binary deltas between versions (set by open_control_plane)
    rollout_thread: ControllerThread | None = None  # set while the app's lifespan runs the loop
