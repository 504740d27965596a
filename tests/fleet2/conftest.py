"""Fleet II end-to-end fixtures: Fleet I's kit (model variants) is reused from tests/fleet."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from fleet_kit import pg_admin_url  # noqa: E402,F401
