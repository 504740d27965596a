"""Prometheus text exposition for the edge server, written here rather than with ``prometheus_client``.

Why our own: the server is embedded (the fleet agent runs one per device, tests run several per
process), and ``prometheus_client``'s process-global default registry makes two servers in one
process collide; the format itself (counters, gauges, histograms, text version 0.0.4) is ~100 lines.

Metric names follow the OpenTelemetry GenAI semantic conventions translated the way the OTel
Prometheus exporter does (dots -> underscores, unit suffix ``_seconds``):

    gen_ai_server_request_duration_seconds        histogram  {gen_ai_operation_name, route, error_type}
    gen_ai_server_time_to_first_token_seconds     histogram  {gen_ai_operation_name}
    gen_ai_server_time_per_output_token_seconds   histogram  {gen_ai_operation_name}
    gen_ai_client_token_usage                     histogram  {gen_ai_operation_name, gen_ai_token_type}
    edgegen_requests_total                        counter    {endpoint, status, route}
    edgegen_upstream_forwards_total               counter    {reason}
    edgegen_generations_cancelled_total           counter    client went away mid-generation
    edgegen_scheduler_queue_depth                 gauge      requests admitted, waiting for the engine
    edgegen_scheduler_running                     gauge      requests generating now (0 or 1)
    edgegen_engine_ready                          gauge      1 when a model is loaded

Token usage and timings are recorded for requests the device answered; the upstream's own figures
are not parsed. This module does no I/O: ``render()`` returns the text, the app serves it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket boundaries advised by the OTel GenAI conventions for each instrument.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

LabelKey = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def header(self) -> list[str]:  # the 0.0.4 text format names counter families with their suffix
        return [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}_total{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A gauge read from a callback at scrape time (queue depth, readiness), so it is never stale."""

    kind = "gauge"

    def __init__(self, name: str, help_: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_)
        self._read = read

    def lines(self) -> list[str]:
        return [f"{self.name} {_num(self._read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help_, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1  # cumulative: every bucket at or above the value
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            c = self._counts.get(self._key(labels))
            return c[-1] if c else 0

    def sum(self, **labels: str) -> float:
        with self._lock:
            return self._sums.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        for key, counts, total in items:
            for bound, c in zip(self.buckets, counts):
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, ('le', _num(bound)))} {c}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return out


class ServerMetrics:
    """Every instrument the server records; ``render()`` gives the exposition text."""

    def __init__(self, *, queue_depth: Callable[[], float], running: Callable[[], float],
                 ready: Callable[[], float]) -> None:
        op = "gen_ai_operation_name"
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Time from request received to last byte sent.",
            (op, "route", "error_type"), DURATION_BUCKETS)
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request received to the first output token (queue wait and prefill included).",
            (op,), TTFT_BUCKETS)
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Decode time per output token after the first.", (op,), TPOT_BUCKETS)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens per request, by gen_ai_token_type (input or output).",
            (op, "gen_ai_token_type"), TOKEN_BUCKETS)
        self.requests = Counter(
            "edgegen_requests", "HTTP requests by endpoint, status code and route (local or upstream).",
            ("endpoint", "status", "route"))
        self.forwards = Counter(
            "edgegen_upstream_forwards", "Requests forwarded upstream, by reason.", ("reason",))
        self.cancelled = Counter(
            "edgegen_generations_cancelled", "Generations stopped because the client disconnected.")
        self._all: list[_Metric] = [
            self.request_duration, self.ttft, self.tpot, self.token_usage, self.requests, self.forwards,
            self.cancelled,
            Gauge("edgegen_scheduler_queue_depth", "Requests admitted and waiting for the engine.", queue_depth),
            Gauge("edgegen_scheduler_running", "Requests generating on the engine now.", running),
            Gauge("edgegen_engine_ready", "1 when a model is loaded and serving, else 0.", ready),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines += metric.header() + metric.lines()
        return "\n".join(lines) + "\n"
