"""The uploader against a mock twin of the transport seam: acks, failures, partial acks, backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.backoff import backoff_delay
from edgegen.errors import TelemetryError
from edgegen.telemetry.events import Ack, Batch, TelemetryKind
from edgegen.telemetry.spool import Spool
from edgegen.telemetry.uploader import Uploader, UploadThread


class MemoryCollector:
    """The control plane's contract in memory: store (stream, seq) once, ack the batch's last seq."""

    def __init__(self, fail_times: int = 0, ack_short_by: int = 0) -> None:
        self.stored: dict[tuple[str, int], dict] = {}
        self.calls = 0
        self.fail_times = fail_times
        self.ack_short_by = ack_short_by
        self.dropped_seen = 0

    def send(self, batch: Batch) -> Ack:
        self.calls += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise TelemetryError("offline")
        new = 0
        for e in batch.events:
            if (batch.stream, e.seq) not in self.stored:
                self.stored[(batch.stream, e.seq)] = e.body
                new += 1
        self.dropped_seen = max(self.dropped_seen, batch.dropped_total)
        return Ack(new, len(batch.events) - new, batch.last_seq - self.ack_short_by)


def fill(spool: Spool, n: int) -> None:
    spool.append_many([(TelemetryKind.REQUEST, {"i": i}, None) for i in range(n)])


def test_flush_sends_in_seq_order_batches_and_empties_the_spool(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        fill(spool, 25)
        col = MemoryCollector()
        report = Uploader(spool, col, batch_events=10).flush()
        assert report.ok and report.batches == 3 and report.sent == 25 and report.stored == 25
        assert sorted(seq for _, seq in col.stored) == list(range(1, 26))
        assert spool.stats().pending == 0


def test_offline_keeps_everything_then_delivers_once(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        fill(spool, 5)
        col = MemoryCollector(fail_times=2)
        up = Uploader(spool, col)
        assert not up.flush().ok and spool.stats().pending == 5
        assert not up.flush().ok and spool.stats().pending == 5
        fill(spool, 5)
        report = up.flush()
        assert report.ok and report.stored == 10 and len(col.stored) == 10


def test_a_partial_ack_keeps_the_rest_for_the_next_flush(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        fill(spool, 10)
        col = MemoryCollector(ack_short_by=3)
        Uploader(spool, col, batch_events=10).flush(max_batches=1)
        assert [e.seq for e in spool.peek()] == [8, 9, 10]  # acked up to 7 only
        col.ack_short_by = 0
        report = Uploader(spool, col).flush()
        assert report.duplicates == 3 and report.stored == 0 and spool.stats().pending == 0


def test_an_ack_below_the_batch_stops_instead_of_spinning(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        fill(spool, 3)
        report = Uploader(spool, MemoryCollector(ack_short_by=100)).flush()
        assert not report.ok and "acknowledged" in (report.error or "") and spool.stats().pending == 3


def test_dropped_counter_travels_with_the_batches(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_bytes=2048) as spool:
        spool.append_many([(TelemetryKind.LOG, {"m": "x" * 100}, None) for _ in range(40)])
        col = MemoryCollector()
        Uploader(spool, col).flush()
        assert col.dropped_seen == spool.stats().dropped > 0


def test_backoff_schedule() -> None:
    assert backoff_delay(0) == 0.0
    assert [backoff_delay(n, 1.0, 60.0, rand=1.0) for n in (1, 2, 3, 7, 20)] == [1.0, 2.0, 4.0, 60.0, 60.0]
    assert backoff_delay(3, 1.0, 60.0, rand=0.0) == 2.0  # jitter keeps at least half


def test_upload_thread_flushes_in_the_background(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        col = MemoryCollector()
        thread = UploadThread(Uploader(spool, col), interval_s=0.05).start()
        fill(spool, 7)
        thread.kick()
        import time

        deadline = time.monotonic() + 10
        while len(col.stored) < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        thread.stop()
        assert len(col.stored) == 7 and thread.failures == 0


def test_upload_thread_stop_survives_an_offline_control_plane(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        fill(spool, 2)
        thread = UploadThread(Uploader(spool, MemoryCollector(fail_times=10**6)), interval_s=0.05).start()
        thread.stop(flush=True)
        assert spool.stats().pending == 2


@pytest.mark.parametrize("status", [401, 500])
def test_http_transport_turns_refusals_into_telemetry_errors(status: int) -> None:
    import httpx

    from edgegen.telemetry.uploader import HttpTransport

    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status, text="no")))
    with pytest.raises(TelemetryError, match=str(status)):
        HttpTransport("http://cp", "dev.secret", client=client).send(Batch("s", ()))
    ok = httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json={"stored": 1, "duplicates": 0, "acked_seq": 9})))
    assert HttpTransport("http://cp", "d.s", client=ok).send(Batch("s", ())) == Ack(1, 0, 9)
    bad = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="nope")))
    with pytest.raises(TelemetryError, match="malformed"):
        HttpTransport("http://cp", "d.s", client=bad).send(Batch("s", ()))
