"""The control plane's ASGI app: ``create_app(config) -> FastAPI``.

Read a request's path from here: ``open_control_plane`` builds the one ``ControlPlane`` (database
migrated, admin token known, root metadata imported, the rollout policy as the desired-version
resolver, the rollout controller), ``create_app`` puts it on ``app.state.fleet`` and includes the
routers listed in ``ROUTERS``, in that order; routes reach the plane through the dependencies in
``edgegen.fleet.auth``. The app's lifespan runs the rollout loop every
``config.rollout_interval_s`` seconds (0: none; tests tick through ``POST /v1/admin/rollouts/tick``)
and telemetry retention every ``config.retention_interval_s``.
This module does not bind sockets: ``edgegen fleet serve`` runs uvicorn on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import APIRouter, FastAPI

from edgegen.errors import TlsSetupError
from edgegen.fleet.auth import ClientCertGate, digest
from edgegen.fleet.db import default_db_url, make_engine, migrate, session_factory
from edgegen.fleet.deltas import DeltaService
from edgegen.fleet.keys import FRESHNESS_KEY_FILE
from edgegen.fleet.registry import BlobStore
from edgegen.fleet.rollout_ctl import ControllerThread, RolloutController
from edgegen.fleet.rollout_db import adapter_resolver, rollout_resolver
from edgegen.fleet.routes import admin, dashboard, device, enroll, rollouts, system, telemetry
from edgegen.fleet.signing import SigningKey
from edgegen.fleet.state import ControlPlane, ControlPlaneConfig, read_or_create_secret
from edgegen.fleet.tls import FleetCA
from edgegen.telemetry.retention import prune

log = logging.getLogger(__name__)

# Every HTTP route of the control plane, by concern; a new concern adds its router here.
ROUTERS: tuple[APIRouter, ...] = (
    system.router,  # /healthz, /v1/root/{n}.json (public)
    enroll.router,  # /v1/enroll (enrolment token)
    device.router,  # /v1/device/* (device credential): desired state, downloads, reports
    admin.router,  # /v1/admin/* (admin token): tokens, devices, publish
    rollouts.router,  # /v1/admin/rollouts* (admin token)
    telemetry.router,  # /v1/telemetry (device), /metrics and /v1/admin/telemetry/* (admin)
    dashboard.router,  # /, /login, /console/* (the web console: admin session cookie + CSRF)
)


def open_control_plane(config: ControlPlaneConfig) -> ControlPlane:
    """Database ready and migrated, admin token known, root metadata imported."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.db_url or default_db_url(config.data_dir))
    migrate(engine)
    token = config.admin_token or read_or_create_secret(config.data_dir / "admin_token")
    sessions = session_factory(engine)
    plane = ControlPlane(
        config=config,
        engine=engine,
        sessions=sessions,
        admin_token_digest=digest(token),
        blobs_dir=config.data_dir / "blobs",
        desired_resolver=rollout_resolver,
        adapter_resolver=adapter_resolver,
        rollouts=RolloutController(sessions),
        freshness_key=_freshness_key(config),
        deltas=DeltaService(BlobStore(config.data_dir / "blobs"), level=config.delta_level),
        ca=FleetCA.open(config.keys_dir) if config.keys_dir and (config.keys_dir / "tls" / "ca.key").exists() else None,
    )
    if config.mutual_tls and plane.ca is None:
        raise TlsSetupError(f"mutual TLS needs the fleet CA in {config.keys_dir}/tls (`edgegen fleet keys init`)")
    if config.keys_dir is not None:
        from edgegen.fleet.registry import import_root_chain

        with plane.sessions() as session:
            import_root_chain(session, config.keys_dir)
    return plane


def _retention_loop(plane: ControlPlane, stop: threading.Event) -> None:
    while not stop.wait(plane.config.retention_interval_s):
        try:
            with plane.sessions() as session:
                prune(session, plane.config.retention, datetime.now(timezone.utc))
                session.commit()
        except Exception:  # keep the loop alive; the next run retries
            log.exception("telemetry retention failed")


def _freshness_key(config: ControlPlaneConfig) -> SigningKey | None:
    path = config.freshness_key or (config.keys_dir / FRESHNESS_KEY_FILE if config.keys_dir else None)
    if path is None or not path.exists():
        log.warning("no freshness key: devices get unsigned desired-state hints (freeze attacks go unseen)")
        return None
    return SigningKey.load(path)


def create_app(config: ControlPlaneConfig, extra_routers: Iterable[APIRouter] = ()) -> FastAPI:
    """The control plane app over ``config``; ``extra_routers`` follow ``ROUTERS`` (tests, plug-ins)."""
    plane = open_control_plane(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.rollout_interval_s > 0:
            plane.rollout_thread = ControllerThread(plane.rollouts, config.rollout_interval_s).start()
        stop_retention = threading.Event()
        retention_thread = threading.Thread(target=_retention_loop, args=(plane, stop_retention), daemon=True,
                                            name="telemetry-retention")
        if config.retention_interval_s > 0:
            retention_thread.start()
        try:
            yield
        finally:
            stop_retention.set()
            if plane.rollout_thread is not None:
                plane.rollout_thread.stop()
                plane.rollout_thread = None

    # no /docs or /redoc: their pages load Swagger UI / ReDoc from a CDN, unreachable on an offline site;
    # the schema itself stays at /openapi.json
    app = FastAPI(title="edgegen fleet control plane", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.fleet = plane
    for router in (*ROUTERS, *extra_routers):
        app.include_router(router)
    if config.mutual_tls:  # every request: a client certificate from the handshake, not revoked
        app.add_middleware(ClientCertGate, plane=plane)
    return app
