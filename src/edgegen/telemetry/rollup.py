"""Pure roll-up of telemetry events into counter increments, and their Prometheus exposition.

    rollup(events) -> {(model_version, counter_name): increment}
    render_prometheus(counter_rows, stream_rows, extra) -> Prometheus text (through prometheus_client)

Counter names are flat strings; histogram buckets are ``<metric>_bucket:<le>`` and cumulative, as
Prometheus expects. Time is exported in seconds. The control plane stores the increments
(``store.py``) only for events it inserted, so every figure here counts each event once. The exposition
is ``prometheus_client``'s (a collector over the stored rows, in a registry per call). No I/O.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgegen.telemetry.events import Event, TelemetryKind

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

HISTOGRAMS: dict[str, tuple[str, tuple[float, ...], str]] = {
    # metric name: (event body field in ms, bucket upper bounds in seconds, help)
    "request_duration_seconds": ("latency_ms", (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 "Time from request to last token."),
    "ttft_seconds": ("ttft_ms", (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                     "Time to first token."),
    "time_per_output_token_seconds": ("tpot_ms", (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                                      "Mean time per output token after the first."),
}
COUNTERS: dict[str, str] = {
    "requests_total": "Inference requests served.",
    "request_errors_total": "Inference requests that failed.",
    "prompt_tokens_total": "Prompt tokens processed.",
    "completion_tokens_total": "Completion tokens generated.",
    "logprob_sum": "Sum over requests of the mean output token log-probability.",
    "logprob_count": "Requests with a mean output token log-probability.",
    "drift_windows_total": "Drift windows compared with the reference.",
    "drift_alerts_total": "Drift windows that raised an alert.",
}
LABELLED: dict[str, tuple[str, str]] = {
    "events_total": ("kind", "Telemetry events stored, by kind."),
    "logs_total": ("level", "Remote log records, by level."),
}
PREFIX = "edgegen_"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


_BUCKET_NAMES = {metric: [f"{metric}_bucket:{_le(b)}" for b in (*bounds, math.inf)]
                 for metric, (_, bounds, _h) in HISTOGRAMS.items()}


def rollup(events: Iterable[Event]) -> dict[tuple[int, str], float]:
    out: dict[tuple[int, str], float] = defaultdict(float)
    # per (version, metric): how many observations fell in each bucket (made cumulative at the end)
    hist: dict[tuple[int, str], list[int]] = {}
    for e in events:
        b = e.body
        v = b.get("model_version")
        version = int(v) if isinstance(v, int) and not isinstance(v, bool) else 0
        out[(version, f"events_total:{e.kind.value}")] += 1
        if e.kind is TelemetryKind.REQUEST:
            out[(version, "requests_total")] += 1
            if b.get("ok") is False:
                out[(version, "request_errors_total")] += 1
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(b.get(key), int):
                    out[(version, f"{key}_total")] += b[key]
            if isinstance(b.get("mean_logprob"), int | float):
                out[(version, "logprob_sum")] += float(b["mean_logprob"])
                out[(version, "logprob_count")] += 1
            for metric, (field, bounds, _) in HISTOGRAMS.items():
                ms = b.get(field)
                if not isinstance(ms, int | float) or isinstance(ms, bool):
                    continue
                s = float(ms) / 1000.0
                out[(version, f"{metric}_sum")] += s
                out[(version, f"{metric}_count")] += 1
                counts = hist.setdefault((version, metric), [0] * (len(bounds) + 1))
                counts[bisect.bisect_left(bounds, s)] += 1
        elif e.kind is TelemetryKind.LOG:
            out[(version, f"logs_total:{str(b.get('level', 'INFO')).upper()}")] += 1
        elif e.kind is TelemetryKind.DRIFT:
            out[(version, "drift_windows_total")] += 1
            if b.get("drift"):
                out[(version, "drift_alerts_total")] += 1
    for (version, metric), counts in hist.items():
        running = 0
        for name, c in zip(_BUCKET_NAMES[metric], counts, strict=True):
            running += c
            if running:
                out[(version, name)] += running
    return dict(out)


# ---- Prometheus text exposition -------------------------------------------------------------------


@dataclass(frozen=True)
class CounterRow:
    device_id: str
    model_version: int
    name: str
    value: float


@dataclass(frozen=True)
class StreamRow:
    device_id: str
    dropped_total: int
    stored: int
    duplicates: int
    rss_bytes: int | None


class _Rollup:
    """A ``prometheus_client`` collector over rows already summed by the control plane's store."""

    def __init__(self, counters: Sequence[CounterRow], streams: Sequence[StreamRow],
                 gauges: dict[str, tuple[str, float]] | None) -> None:
        self.counters, self.streams, self.gauges = counters, streams, gauges or {}

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        base = ["device", "model_version"]
        by_name: dict[str, list[CounterRow]] = defaultdict(list)
        for c in self.counters:
            by_name[c.name].append(c)
        for name, help_ in COUNTERS.items():
            kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            fam = kind(PREFIX + name, help_, labels=base)
            for c in sorted(by_name.get(name, []), key=_key):
                fam.add_metric([c.device_id, str(c.model_version)], c.value)
            yield fam
        for name, (label, help_) in LABELLED.items():
            fam = CounterMetricFamily(PREFIX + name, help_, labels=[*base, label])
            for c in sorted((c for c in self.counters if c.name.startswith(name + ":")), key=_key):
                fam.add_metric([c.device_id, str(c.model_version), c.name.split(":", 1)[1]], c.value)
            yield fam
        index = {(c.device_id, c.model_version, c.name): c.value for c in self.counters}
        for metric, (_, bounds, help_) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(PREFIX + metric, help_, labels=base)
            series = sorted({(c.device_id, c.model_version) for c in self.counters
                             if c.name.startswith(metric + "_")})
            for dev, ver in series:
                buckets = [(_le(b), index.get((dev, ver, f"{metric}_bucket:{_le(b)}"), 0.0))
                           for b in (*bounds, math.inf)]
                hist.add_metric([dev, str(ver)], buckets, index.get((dev, ver, f"{metric}_sum"), 0.0))
            yield hist
        per_device: dict[str, list[StreamRow]] = defaultdict(list)
        for s in self.streams:
            per_device[s.device_id].append(s)
        for name, attr, kind, help_ in (
            ("telemetry_dropped_total", "dropped_total", CounterMetricFamily,
             "Events a device spool dropped (byte bound)."),
            ("telemetry_stored_total", "stored", CounterMetricFamily, "Telemetry events stored by the control plane."),
            ("telemetry_duplicates_total", "duplicates", CounterMetricFamily, "Re-sent telemetry events ignored."),
            ("device_memory_rss_bytes", "rss_bytes", GaugeMetricFamily, "Last reported resident memory of the agent."),
        ):
            fam = kind(PREFIX + name, help_, labels=["device"])
            for dev in sorted(per_device):
                vals = [getattr(s, attr) for s in per_device[dev] if getattr(s, attr) is not None]
                if vals:
                    fam.add_metric([dev], max(vals) if attr == "rss_bytes" else sum(vals))
            yield fam
        for name, (help_, value) in self.gauges.items():
            yield GaugeMetricFamily(PREFIX + name, help_, value=value)


def render_prometheus(counters: Sequence[CounterRow], streams: Sequence[StreamRow],
                      gauges: dict[str, tuple[str, float]] | None = None) -> str:
    """The exposition text (``prometheus_client``'s format) of the stored roll-up, in a registry of its
    own (nothing process-global)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Rollup(counters, streams, gauges))  # type: ignore[arg-type]
    return generate_latest(registry).decode("utf-8")


def _key(c: CounterRow) -> tuple[str, int, str]:
    return (c.device_id, c.model_version, c.name)
