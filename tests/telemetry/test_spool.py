"""The device spool: seqs, the byte bound, acks, persistence and concurrent writers (real SQLite)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest

from edgegen.errors import TelemetryError
from edgegen.telemetry.events import Batch, TelemetryKind, request_body, validate_body
from edgegen.telemetry.spool import Spool

REQ = TelemetryKind.REQUEST


def test_seqs_increase_by_one_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as s:
        assert [s.append(REQ, {"i": i}) for i in range(5)] == [1, 2, 3, 4, 5]
        stream = s.stream
        assert s.ack(3) == 3
    with Spool(path) as s:  # a restart keeps the stream and never reuses a seq, even acked ones
        assert s.stream == stream
        assert s.append(REQ, {"i": 5}) == 6
        assert [e.seq for e in s.peek()] == [4, 5, 6]
        st = s.stats()
        assert (st.pending, st.last_seq, st.dropped) == (3, 6, 0)


def test_ack_everything_then_seq_continues(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as s:
        s.append_many([(REQ, {"i": i}, None) for i in range(3)])
        s.ack(3)
        assert s.peek() == [] and s.stats().bytes == 0
        assert s.append(REQ, {}) == 4


def test_byte_bound_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_bytes=4096) as s:
        body = {"pad": "x" * 200}
        for _ in range(100):
            s.append(REQ, body)
        st = s.stats()
        assert st.bytes <= 4096
        assert st.dropped > 0 and st.pending + st.dropped == 100
        seqs = [e.seq for e in s.peek(limit=1000)]
        assert seqs == list(range(100 - st.pending + 1, 101))  # the newest survive, contiguous


def test_a_new_spool_is_a_new_stream(tmp_path: Path) -> None:
    with Spool(tmp_path / "a.db") as a, Spool(tmp_path / "b.db") as b:
        assert a.stream != b.stream


def test_peek_respects_limits_and_order(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as s:
        for i in range(10):
            s.append(REQ, {"i": i, "pad": "y" * 100}, ts=1000.0 + i)
        assert [e.seq for e in s.peek(limit=4)] == [1, 2, 3, 4]
        small = s.peek(limit=10, max_bytes=300)
        assert 1 <= len(small) < 10 and small[0].seq == 1
        assert s.peek(limit=10, max_bytes=1)[0].seq == 1  # always at least one
        e = s.peek(limit=1)[0]
        assert e.ts == 1000.0 and e.body == {"i": 0, "pad": "y" * 100} and e.kind is REQ


def test_threads_get_distinct_contiguous_seqs(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as s:
        got: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            mine = [s.append(REQ, {"t": 1}) for _ in range(50)]
            with lock:
                got.extend(mine)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, 201))


def _writer(path: str, n: int) -> None:
    with Spool(path) as s:
        for _ in range(n):
            s.append(REQ, {"p": 1})


def test_processes_share_one_spool(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Spool(path) as s:
        assert [e.seq for e in s.peek(limit=1000)] == list(range(1, 121))


def test_corrupt_spool_is_a_telemetry_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TelemetryError):
        Spool(path)


def test_spool_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as s:
        s.append(REQ, {})
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_request_body_and_validation() -> None:
    b = request_body(model_version=3, prompt_tokens=10, completion_tokens=5, ttft_s=0.1, total_s=0.5,
                     mean_logprob=-1.25)
    assert b["tpot_ms"] == pytest.approx(100.0) and b["ttft_ms"] == 100.0 and b["latency_ms"] == 500.0
    assert validate_body(b) is b
    one = request_body(model_version=None, prompt_tokens=1, completion_tokens=1, ttft_s=0.1, total_s=0.1)
    assert one["tpot_ms"] is None
    for bad in ([], {"nested": {"a": 1}}, {"x": float("nan")}, {"big": "z" * 10000}):
        with pytest.raises(ValueError):
            validate_body(bad)
    batch = Batch("abc", (), 3)
    assert Batch.from_json(batch.to_json()) == batch and batch.last_seq == 0
