"""The control plane's ASGI app: ``create_app(config) -> FastAPI``.

Opens the database (SQLite by default, PostgreSQL by URL), runs the Alembic migrations to every head,
imports root metadata from the keys directory, and includes every router found in
``edgegen.fleet.routes`` (see that package's docstring for how Fleet II adds its own). The shared
state lives on ``app.state.fleet`` (a ``ControlPlane``); routes reach it with the dependencies in
``edgegen.fleet.auth``. This module does not bind sockets: ``edgegen fleet serve`` runs uvicorn on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import APIRouter, FastAPI

from edgegen.fleet.auth import digest
from edgegen.fleet.db import default_db_url, make_engine, migrate, session_factory
from edgegen.fleet.routes import discover_routers
from edgegen.fleet.state import ControlPlane, ControlPlaneConfig, read_or_create_secret

log = logging.getLogger(__name__)


def open_control_plane(config: ControlPlaneConfig) -> ControlPlane:
    """Database ready and migrated, admin token known, root metadata imported."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.db_url or default_db_url(config.data_dir))
    migrate(engine)
    token = config.admin_token or read_or_create_secret(config.data_dir / "admin_token")
    plane = ControlPlane(
        config=config,
        engine=engine,
        sessions=session_factory(engine),
        admin_token_digest=digest(token),
        blobs_dir=config.data_dir / "blobs",
    )
    if config.keys_dir is not None:
        from edgegen.fleet.registry import import_root_chain

        with plane.sessions() as session:
            import_root_chain(session, config.keys_dir)
    return plane


def create_app(config: ControlPlaneConfig, extra_routers: Iterable[APIRouter] = ()) -> FastAPI:
    plane = open_control_plane(config)
    app = FastAPI(title="edgegen fleet control plane", version="1")
    app.state.fleet = plane
    for router in [*discover_routers(), *extra_routers]:
        app.include_router(router)
        hook = getattr(router, "install_plane", None)  # Fleet II: e.g. the rollout-aware desired policy
        if hook is not None:
            hook(plane)
    return app
