"""Fixtures for the agent tests: the fleet kit from tests/fleet (a live control plane, model versions)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fleet"))

from fleet_kit import db_url, fleet, model_versions, pg_admin_url  # noqa: E402,F401
