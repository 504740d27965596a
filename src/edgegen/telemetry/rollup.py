"""Pure roll-up of telemetry events into counter increments, and their Prometheus exposition.

    rollup(events) -> {(model_version, counter_name): increment}
    render_prometheus(counter_rows, stream_rows, extra) -> text format 0.0.4

Counter names are flat strings; histogram buckets are ``<metric>_bucket:<le>`` and cumulative, as
Prometheus expects. Time is exported in seconds. The control plane stores the increments
(``store.py``) only for events it inserted, so every figure here counts each event once. No I/O.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgegen.telemetry.events import Event, TelemetryKind

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


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kw: Any) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kw.items()) + "}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def render_prometheus(counters: Sequence[CounterRow], streams: Sequence[StreamRow],
                      gauges: dict[str, tuple[str, float]] | None = None) -> str:
    lines: list[str] = []
    by_name: dict[str, list[CounterRow]] = defaultdict(list)
    for c in counters:
        by_name[c.name].append(c)

    def base(c: CounterRow) -> dict[str, Any]:
        return {"device": c.device_id, "model_version": c.model_version}

    for name, help_ in COUNTERS.items():
        rows = by_name.get(name, [])
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} {kind}"]
        lines += [f"{PREFIX}{name}{_labels(**base(c))} {_num(c.value)}" for c in sorted(rows, key=_key)]
    for name, (label, help_) in LABELLED.items():
        rows = [c for c in counters if c.name.startswith(name + ":")]
        lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} counter"]
        for c in sorted(rows, key=_key):
            lines.append(f"{PREFIX}{name}{_labels(**base(c), **{label: c.name.split(':', 1)[1]})} {_num(c.value)}")
    for metric, (_, bounds, help_) in HISTOGRAMS.items():
        lines += [f"# HELP {PREFIX}{metric} {help_}", f"# TYPE {PREFIX}{metric} histogram"]
        series = sorted({(c.device_id, c.model_version) for c in counters if c.name.startswith(metric + "_")})
        index = {(c.device_id, c.model_version, c.name): c.value for c in counters}
        for dev, ver in series:
            for bound in (*bounds, math.inf):
                v = index.get((dev, ver, f"{metric}_bucket:{_le(bound)}"), 0.0)
                lines.append(f"{PREFIX}{metric}_bucket{_labels(device=dev, model_version=ver, le=_le(bound))} "
                             f"{_num(v)}")
            for suffix in ("sum", "count"):
                v = index.get((dev, ver, f"{metric}_{suffix}"), 0.0)
                lines.append(f"{PREFIX}{metric}_{suffix}{_labels(device=dev, model_version=ver)} {_num(v)}")
    per_device: dict[str, list[StreamRow]] = defaultdict(list)
    for s in streams:
        per_device[s.device_id].append(s)
    for name, attr, kind, help_ in (
        ("telemetry_dropped_total", "dropped_total", "counter", "Events a device spool dropped (byte bound)."),
        ("telemetry_stored_total", "stored", "counter", "Telemetry events stored by the control plane."),
        ("telemetry_duplicates_total", "duplicates", "counter", "Re-sent telemetry events ignored."),
        ("device_memory_rss_bytes", "rss_bytes", "gauge", "Last reported resident memory of the agent."),
    ):
        lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} {kind}"]
        for dev in sorted(per_device):
            vals = [getattr(s, attr) for s in per_device[dev] if getattr(s, attr) is not None]
            if vals:
                value = max(vals) if attr == "rss_bytes" else sum(vals)
                lines.append(f"{PREFIX}{name}{_labels(device=dev)} {_num(value)}")
    for name, (help_, value) in (gauges or {}).items():
        lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} gauge", f"{PREFIX}{name} {_num(value)}"]
    return "\n".join(lines) + "\n"


def _key(c: CounterRow) -> tuple[str, int, str]:
    return (c.device_id, c.model_version, c.name)
