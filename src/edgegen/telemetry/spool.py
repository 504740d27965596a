"""The device-side telemetry spool: an SQLite (WAL) queue bounded in bytes.

    Spool(path, max_bytes)    open or create; safe across threads and processes (SQLite locking)
    .append(kind, body)       store one event, return its seq; drop the oldest events while the
                              stored bytes exceed ``max_bytes`` and count them in ``dropped``
    .peek(limit, max_bytes)   the oldest pending events, in seq order (nothing is removed)
    .ack(seq)                 forget every event up to ``seq`` (the control plane has stored them)
    .stats()                  pending count, stored bytes, dropped total, last seq, stream id

Sequence numbers come from ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite never reuses one, even
after the row is deleted, and a rolled-back insert consumes none. So seqs are exactly 1, 2, 3...
in commit order, a gap on the control plane means events were dropped here, and nothing is lost
or renumbered when the process is killed (every append is one committed transaction). With
``synchronous=NORMAL`` (the default) a *power* loss may forget the last few commits but never
corrupts the spool; ``durable=True`` uses ``synchronous=FULL`` (an fsync per append).

With a ``cipher`` (the device's at-rest key) each event body is sealed with AES-GCM, its kind as
associated data; kinds, times and sizes stay readable (the spool's bookkeeping needs them).

The spool id (``stream``) is random and made with the spool: a device whose spool is wiped starts a
new stream, so restarting at seq 1 is not mistaken for duplicates. This module does no networking.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.errors import TelemetryError
from edgegen.telemetry.events import Event, TelemetryKind, encode_body

if TYPE_CHECKING:
    from edgegen.sealed import RowCipher

ROW_OVERHEAD_BYTES = 32  # seq, ts, size and SQLite's per-row bookkeeping, roughly

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    ts   REAL NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SpoolStats:
    stream: str
    pending: int
    bytes: int
    dropped: int
    last_seq: int  # the highest seq ever assigned (0 for a new spool)
    max_bytes: int


class Spool:
    def __init__(self, path: Path | str, max_bytes: int = 8 * 1024 * 1024, *, durable: bool = False,
                 cipher: RowCipher | None = None) -> None:
        """``cipher``: seal each event body with the device's at-rest key (``edgegen.sealed``)."""
        self.cipher = cipher
        if max_bytes < 1024:
            raise ValueError("a spool needs at least 1 KiB")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            with self._tx():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('stream', ?), ('bytes', '0'), ('dropped', '0')",
                    (secrets.token_hex(8),),
                )
            self.stream = self._meta("stream")
        except sqlite3.Error as exc:
            raise TelemetryError(f"cannot open telemetry spool {self.path}: {exc}") from exc

    # ---- internals ----------------------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def _add_meta(self, key: str, delta: int) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (delta, key))

    def _evict(self) -> None:
        """Inside a transaction: drop the oldest events until the stored bytes fit the bound."""
        excess = int(self._meta("bytes")) - self.max_bytes
        if excess <= 0:
            return
        freed = dropped = 0
        last = 0
        for seq, size in self._db.execute("SELECT seq, size FROM events ORDER BY seq"):
            freed += size
            dropped += 1
            last = seq
            if freed >= excess:
                break
        self._db.execute("DELETE FROM events WHERE seq <= ?", (last,))
        self._add_meta("bytes", -freed)
        self._add_meta("dropped", dropped)

    # ---- API ----------------------------------------------------------------------------------

    def append(self, kind: TelemetryKind, body: dict[str, Any], ts: float | None = None) -> int:
        return self.append_many([(kind, body, ts)])[-1]

    def append_many(self, items: list[tuple[TelemetryKind, dict[str, Any], float | None]]) -> list[int]:
        """Append several events in one transaction; returns their seqs."""
        rows = []
        for kind, body, ts in items:
            text = encode_body(body)
            if self.cipher is not None:
                text = self.cipher.seal(text, TelemetryKind(kind).value.encode())
            rows.append((time.time() if ts is None else float(ts), TelemetryKind(kind).value, text,
                         len(text) + len(kind.value) + ROW_OVERHEAD_BYTES))
        seqs: list[int] = []
        try:
            with self._lock, self._tx():
                for row in rows:
                    cur = self._db.execute("INSERT INTO events(ts, kind, body, size) VALUES (?, ?, ?, ?)", row)
                    seqs.append(int(cur.lastrowid or 0))
                self._add_meta("bytes", sum(r[3] for r in rows))
                self._evict()
        except sqlite3.Error as exc:
            raise TelemetryError(f"telemetry spool append failed: {exc}") from exc
        return seqs

    def peek(self, limit: int = 500, max_bytes: int = 512 * 1024) -> list[Event]:
        """Up to ``limit`` oldest events, cut so their bodies stay under ``max_bytes`` (at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts, kind, body, size FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        out: list[Event] = []
        total = 0
        for seq, ts, kind, body, size in rows:
            if out and total + size > max_bytes:
                break
            total += size
            if self.cipher is not None:
                body = self.cipher.open(body, str(kind).encode())
            out.append(Event(int(seq), float(ts), TelemetryKind(kind), json.loads(body)))
        return out

    def ack(self, upto_seq: int) -> int:
        """Delete every event with ``seq <= upto_seq``; returns how many were deleted."""
        try:
            with self._lock, self._tx():
                n, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE seq <= ?", (upto_seq,)
                ).fetchone()
                self._db.execute("DELETE FROM events WHERE seq <= ?", (upto_seq,))
                self._add_meta("bytes", -int(size))
        except sqlite3.Error as exc:
            raise TelemetryError(f"telemetry spool ack failed: {exc}") from exc
        return int(n)

    def stats(self) -> SpoolStats:
        with self._lock:
            pending = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            return SpoolStats(self.stream, int(pending), int(self._meta("bytes")), int(self._meta("dropped")),
                              int(row[0]) if row else 0, self.max_bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({os.fspath(self.path)!r}, max_bytes={self.max_bytes})"


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
