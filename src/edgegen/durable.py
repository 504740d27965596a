"""Crash-safe files: the one way edgegen replaces a file on disk, and the crash harness's hook.

    atomic_write(path, data)   temp file in the same directory, write, fsync, ``os.replace``, fsync
                               the directory: after a crash ``path`` holds the old bytes or the new
                               bytes, never a mixture or nothing (python-tuf's ``persist_temp_file``
                               pattern, with the directory fsync that makes the rename durable)
    commit_file(tmp, path)     the same last steps for a temp file written by streaming (a model, a
                               blob): fsync ``tmp``, ``os.replace``, fsync the directory
    fsync_dir(path)            make a rename or unlink in ``path`` durable
    crashpoint(name)           fault injection: SIGKILLs this process the n-th time ``name`` is
                               reached when ``EDGEGEN_AGENT_CRASH_AT=name:n`` (inert otherwise)

This module knows nothing about what the files hold; it raises ``OSError`` as the OS does.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

CRASH_ENV = "EDGEGEN_AGENT_CRASH_AT"
_crash_target: tuple[str, int] | None = None
_crash_counts: dict[str, int] = {}


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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, path: Path) -> None:
    """Make the fully written ``tmp`` durable and move it over ``path`` (same directory)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, label: str = "file") -> None:
    """Replace ``path`` with ``data`` (file created with ``mode``); ``label`` names the crashpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
