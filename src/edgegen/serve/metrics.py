"""The edge server's Prometheus metrics, through ``prometheus_client``.

Each ``ServerMetrics`` owns its own ``CollectorRegistry`` (never the process-global default one): the
server is embedded (the fleet agent runs one per device, tests run several per process), and with one
registry per server two servers in one process never collide.

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
are not parsed. Instruments keep a small call shape (``inc(amount, **labels)``,
``observe(value, **labels)``) so callers never hold ``prometheus_client`` objects. This module does no
I/O: ``render()`` returns the text, the app serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import prometheus_client as prom
from prometheus_client import CollectorRegistry

CONTENT_TYPE = prom.CONTENT_TYPE_LATEST

# Bucket boundaries advised by the OTel GenAI conventions for each instrument.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class Counter:
    """A counter family; ``inc(amount, **labels)`` with exactly its label names."""

    def __init__(self, registry: CollectorRegistry, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        self.labelnames = tuple(labelnames)
        self._registry, self._name = registry, name
        self._m = prom.Counter(name, help_, self.labelnames, registry=registry)

    def _child(self, labels: dict[str, str]) -> prom.Counter:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"takes labels {self.labelnames}, got {tuple(labels)}")
        return self._m.labels(**labels) if self.labelnames else self._m

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)  # prometheus_client refuses a negative amount (ValueError)

    def value(self, **labels: str) -> float:
        self._child(labels)  # checks the label names
        return self._registry.get_sample_value(self._name + "_total", labels) or 0.0


class Histogram:
    """A histogram family; ``observe(value, **labels)`` with exactly its label names."""

    def __init__(self, registry: CollectorRegistry, name: str, help_: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.labelnames = tuple(labelnames)
        self._m = prom.Histogram(name, help_, self.labelnames, buckets=tuple(buckets), registry=registry)

    def observe(self, value: float, **labels: str) -> None:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"takes labels {self.labelnames}, got {tuple(labels)}")
        (self._m.labels(**labels) if self.labelnames else self._m).observe(value)


class ServerMetrics:
    """Every instrument one server records, in its own registry; ``render()`` gives the exposition text."""

    def __init__(self, *, queue_depth: Callable[[], float], running: Callable[[], float],
                 ready: Callable[[], float]) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        op = "gen_ai_operation_name"
        self.request_duration = Histogram(
            reg, "gen_ai_server_request_duration_seconds", "Time from request received to last byte sent.",
            (op, "route", "error_type"), DURATION_BUCKETS)
        self.ttft = Histogram(
            reg, "gen_ai_server_time_to_first_token_seconds",
            "Time from request received to the first output token (queue wait and prefill included).",
            (op,), TTFT_BUCKETS)
        self.tpot = Histogram(
            reg, "gen_ai_server_time_per_output_token_seconds",
            "Decode time per output token after the first.", (op,), TPOT_BUCKETS)
        self.token_usage = Histogram(
            reg, "gen_ai_client_token_usage", "Tokens per request, by gen_ai_token_type (input or output).",
            (op, "gen_ai_token_type"), TOKEN_BUCKETS)
        self.requests = Counter(
            reg, "edgegen_requests", "HTTP requests by endpoint, status code and route (local or upstream).",
            ("endpoint", "status", "route"))
        self.forwards = Counter(
            reg, "edgegen_upstream_forwards", "Requests forwarded upstream, by reason.", ("reason",))
        self.cancelled = Counter(
            reg, "edgegen_generations_cancelled", "Generations stopped because the client disconnected.")
        for name, help_, read in (
                ("edgegen_scheduler_queue_depth", "Requests admitted and waiting for the engine.", queue_depth),
                ("edgegen_scheduler_running", "Requests generating on the engine now.", running),
                ("edgegen_engine_ready", "1 when a model is loaded and serving, else 0.", ready)):
            prom.Gauge(name, help_, registry=reg).set_function(read)  # read at scrape time: never stale

    def render(self) -> str:
        return prom.generate_latest(self.registry).decode("utf-8")
