"""Telemetry tests reuse Fleet I's database fixtures: ``db_url`` runs a test on SQLite and on a real
PostgreSQL server (started from Debian's packages, or skipped with the reason)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from fleet_kit import db_url, pg_admin_url  # noqa: E402,F401
