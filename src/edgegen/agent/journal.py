"""The agent's idempotent step journal, a JSON document written with ``durable.atomic_write``.

    Journal(path).load()/save()   after a crash the journal holds the last saved state, whole

The journal records *which step an update has reached*; every step is written so that doing it
again is harmless (see ``agent.py``). This module knows nothing about models or trust. Crash-safe
writes and the crash harness's ``crashpoint`` live in ``edgegen.durable`` (re-exported here for
the agent's modules).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgegen.durable import CRASH_ENV, atomic_write, crashpoint, fsync_dir

__all__ = ["CRASH_ENV", "Journal", "atomic_write", "crashpoint", "fsync_dir"]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(state, sort_keys=True, indent=1).encode(), label="journal")
