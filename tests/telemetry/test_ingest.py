"""Control-plane ingest on a real, migrated database (SQLite and PostgreSQL): exactly-once storage
and counters, including concurrent duplicate batches."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from edgegen.telemetry import store
from edgegen.telemetry.events import Batch, Event, TelemetryKind, request_body
from edgegen.telemetry.rollup import CounterRow, StreamRow, render_prometheus, rollup

FLEET_II_TABLES = {"rollouts", "rollout_events", "rollout_policies", "telemetry_events", "telemetry_counters",
                   "telemetry_streams"}


def req(seq: int, latency_s: float = 0.2, ok: bool = True, version: int = 1) -> Event:
    body = request_body(model_version=version, prompt_tokens=10, completion_tokens=5, ttft_s=0.05,
                        total_s=latency_s, ok=ok, mean_logprob=-1.0)
    return Event(seq, 1_700_000_000.0 + seq, TelemetryKind.REQUEST, body)


def test_migration_matches_the_models(sessions) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import edgegen.fleet.rollout_db  # noqa: F401  (registers the rollout tables on Base)
    from edgegen.fleet.db import Base

    engine = sessions.kw["bind"]
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    mine = [d for d in diffs if any(t in repr(d) for t in FLEET_II_TABLES)]
    assert mine == []


def test_a_batch_sent_twice_is_stored_once(sessions) -> None:
    batch = Batch("s1", tuple(req(i) for i in range(1, 11)))
    with sessions() as s:
        ack = store.ingest(s, "dev0", batch)
        assert (ack.stored, ack.duplicates, ack.acked_seq) == (10, 0, 10)
    with sessions() as s:
        ack = store.ingest(s, "dev0", batch)
        assert (ack.stored, ack.duplicates, ack.acked_seq) == (0, 10, 10)
    overlap = Batch("s1", tuple(req(i) for i in range(6, 16)))
    with sessions() as s:
        ack = store.ingest(s, "dev0", overlap)
        assert (ack.stored, ack.duplicates) == (5, 5)
        assert store.stored_seqs(s, "dev0") == list(range(1, 16))
        counters = {(c.model_version, c.name): c.value for c in store.counters(s) if c.device_id == "dev0"}
        assert counters[(1, "requests_total")] == 15  # counted once per stored event
        assert counters[(1, "completion_tokens_total")] == 75
        (stream,) = store.streams(s)
        assert (stream.stored, stream.duplicates, stream.max_seq) == (15, 15, 15)


def test_same_seq_on_another_device_or_stream_is_distinct(sessions) -> None:
    with sessions() as s:
        store.ingest(s, "dev0", Batch("s1", (req(1),)))
        assert store.ingest(s, "dev1", Batch("s1", (req(1),))).stored == 1
        assert store.ingest(s, "dev0", Batch("s2", (req(1),))).stored == 1  # a wiped spool's new stream


def test_concurrent_duplicate_batches_store_once(sessions) -> None:
    batch = Batch("s1", tuple(req(i) for i in range(1, 201)))
    acks = []

    def send() -> None:
        with sessions() as s:
            acks.append(store.ingest(s, "dev2", batch))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a.stored for a in acks) == 200
    with sessions() as s:
        n = s.scalar(select(func.count()).select_from(store.TelemetryEvent).where(
            store.TelemetryEvent.device_id == "dev2"))
        assert n == 200
        c = {c.name: c.value for c in store.counters(s) if c.device_id == "dev2"}
        assert c["requests_total"] == 200


def test_dropped_counter_is_kept_as_the_maximum(sessions) -> None:
    with sessions() as s:
        store.ingest(s, "dev0", Batch("s1", (req(5),), dropped_total=4))
        store.ingest(s, "dev0", Batch("s1", (req(3),), dropped_total=2))  # an older retried batch
        (stream,) = store.streams(s)
        assert stream.dropped_total == 4


def test_request_window_filters_version_and_time(sessions) -> None:
    import time
    from datetime import datetime, timezone

    from edgegen.fleet.db import utcnow

    events = [req(i, latency_s=0.1 * i, ok=(i != 3), version=2 if i > 2 else 1) for i in range(1, 6)]
    with sessions() as s:
        store.ingest(s, "dev0", Batch("s1", tuple(events[:4])))
        s.commit()
        time.sleep(0.01)
        cut = utcnow()  # windows go by the control plane's receipt time, not the device's clock
        time.sleep(0.01)
        store.ingest(s, "dev0", Batch("s1", tuple(events[4:])))
        w = store.request_window(s, "dev0", 2, datetime.fromtimestamp(0, tz=timezone.utc))
        assert w.requests == 3 and w.errors == 1 and sorted(w.latencies_ms) == [300.0, 400.0, 500.0]
        assert store.request_window(s, "dev0", 2, cut).requests == 1
        assert store.request_window(s, "dev0", 1, cut).requests == 0


def test_rollup_histograms_are_cumulative() -> None:
    sums = rollup([req(1, latency_s=0.2), req(2, latency_s=3.0), req(3, latency_s=0.2, ok=False)])
    assert sums[(1, "request_duration_seconds_bucket:0.25")] == 2
    assert sums[(1, "request_duration_seconds_bucket:5")] == 3
    assert sums[(1, "request_duration_seconds_bucket:+Inf")] == 3
    assert "request_duration_seconds_bucket:0.1" not in {n for _, n in sums}
    assert sums[(1, "request_errors_total")] == 1
    assert sums[(1, "request_duration_seconds_sum")] == pytest.approx(3.4)


def test_prometheus_exposition() -> None:
    rows = [CounterRow("dev0", 1, n, v) for (_, n), v in rollup([req(1), req(2, ok=False)]).items()]
    text = render_prometheus(rows, [StreamRow("dev0", 7, 2, 1, 123456)], {"devices_online": ("Online.", 1)})
    lines = text.splitlines()
    assert 'edgegen_requests_total{device="dev0",model_version="1"} 2.0' in lines
    assert 'edgegen_request_errors_total{device="dev0",model_version="1"} 1.0' in lines
    assert 'edgegen_ttft_seconds_bucket{device="dev0",le="0.05",model_version="1"} 2.0' in lines
    assert 'edgegen_ttft_seconds_count{device="dev0",model_version="1"} 2.0' in lines
    assert 'edgegen_telemetry_dropped_total{device="dev0"} 7.0' in lines
    assert 'edgegen_device_memory_rss_bytes{device="dev0"} 123456.0' in lines
    assert "# TYPE edgegen_request_duration_seconds histogram" in lines
    assert 'edgegen_events_total{device="dev0",kind="request",model_version="1"} 2.0' in lines
    assert "edgegen_devices_online 1.0" in lines
    # prometheus_client's own parser reads every family back
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"edgegen_requests", "edgegen_ttft_seconds", "edgegen_devices_online"} <= names


def _naive_buckets(latencies_s: list[float]) -> dict[str, float]:
    """The slow reference: every bucket whose bound is >= the value counts it."""
    import math

    from edgegen.telemetry.rollup import HISTOGRAMS

    bounds = (*HISTOGRAMS["request_duration_seconds"][1], math.inf)
    out: dict[str, float] = {}
    for s in latencies_s:
        for b in bounds:
            if s <= b:
                name = "request_duration_seconds_bucket:" + ("+Inf" if math.isinf(b) else f"{b:g}")
                out[name] = out.get(name, 0) + 1
    return out


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=60))
def test_rollup_buckets_match_the_naive_reference(latencies_s: list[float]) -> None:
    events = [req(i + 1, latency_s=x) for i, x in enumerate(latencies_s)]
    fast = {n: v for (_, n), v in rollup(events).items() if n.startswith("request_duration_seconds_bucket")}
    # request_body rounds to the microsecond: the reference sees the same rounded value
    assert fast == _naive_buckets([e.body["latency_ms"] / 1000.0 for e in events])
