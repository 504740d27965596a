"""Fixtures for the control-plane tests (see fleet_kit.py)."""

from fleet_kit import db_url, fleet, model_versions, pg_admin_url  # noqa: F401
