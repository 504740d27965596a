"""Telemetry tests reuse Fleet I's database fixtures: ``db_url`` runs a test on SQLite and on a real
PostgreSQL server (started from Debian's packages, or skipped with the reason)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

import pytest  # noqa: E402
from fleet_kit import db_url, pg_admin_url  # noqa: E402,F401

from edgegen.fleet.db import Device, make_engine, migrate, session_factory  # noqa: E402


@pytest.fixture()
def sessions(db_url: str):  # noqa: F811
    """A migrated control-plane database with three enrolled devices (dev0..dev2); yields a session factory."""
    engine = make_engine(db_url)
    migrate(engine)
    factory = session_factory(engine)
    with factory() as s:
        for i in range(3):
            s.add(Device(id=f"dev{i}", credential_hash="0" * 64, model_name="smol"))
        s.commit()
    yield factory
    engine.dispose()
