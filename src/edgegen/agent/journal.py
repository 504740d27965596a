"""Durable small files for the agent: atomic writes and the idempotent step journal.

    atomic_write(path, bytes)     temp file in the same directory, write, fsync, ``os.replace``,
                                  fsync the directory: after a crash the path holds the old bytes
                                  or the new bytes, never a mixture or nothing
    Journal(path).load()/save()   the update journal, a JSON document written with atomic_write
    crashpoint(name)              fault injection for the crash harness: SIGKILLs this process the
                                  n-th time ``name`` is reached when ``EDGEGEN_AGENT_CRASH_AT=name:n``
                                  (inert otherwise)

The journal records *which step an update has reached*; every step is written so that doing it
again is harmless (see ``agent.py``). This module knows nothing about models or trust.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

CRASH_ENV = "EDGEGEN_AGENT_CRASH_AT"
_crash_target: tuple[str, int] | None = None
_crash_counts: dict[str, int] = {}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, label: str = "file") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        half = len(view) // 2
        os.write(fd, view[:half])
        crashpoint(f"{label}.partial")  # a torn temp file must never become visible
        while half < len(view):
            half += os.write(fd, view[half:])
        os.fsync(fd)
    finally:
        os.close(fd)
    crashpoint(f"{label}.before_replace")
    os.replace(tmp, path)
    fsync_dir(path.parent)


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


def crashpoint(name: str) -> None:
    """SIGKILL ourselves here if the crash harness asked for it (``EDGEGEN_AGENT_CRASH_AT``)."""
    global _crash_target
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    if _crash_target is None:
        point, _, n = spec.rpartition(":")
        _crash_target = (point, int(n)) if point else (spec, 1)
    if name != _crash_target[0]:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == _crash_target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
