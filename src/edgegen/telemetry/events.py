"""Telemetry events: what a device records, and the batch it uploads (pure data, no I/O).

    TelemetryKind   request | memory | model | log | drift
    Event           one spooled event: (seq, ts, kind, body); ``seq`` increases by one per event
                    a spool ever stored, so gaps on the control plane mean drops, never reordering
    Batch           what the uploader sends: device stream id, events in seq order, and the spool's
                    cumulative dropped counter (so data lost to the byte bound is itself reported)
    Ack             what the control plane answers: stored, duplicates, highest seq it now holds

``GenerationRecord`` is what an edge server hands its observers after each generation (the seam
between serving and telemetry). ``request_body`` builds the body of a request event from the
numbers an inference produced, so the
edge server, the agent's health check and tests all describe a request the same way. Bodies are
small flat JSON objects; ``validate_body`` bounds them (the control plane calls it on ingest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_BODY_BYTES = 8192
MAX_BATCH_EVENTS = 2000


class TelemetryKind(str, Enum):
    REQUEST = "request"  # one inference: tokens, TTFT, time per output token, latency, ok/error
    MEMORY = "memory"  # process RSS and free memory, sampled by the agent
    MODEL = "model"  # the active model version changed (or was reported at start)
    LOG = "log"  # a remote log record (WARNING and above by default)
    DRIFT = "drift"  # a drift window was compared with the reference (alert or not)


@dataclass(frozen=True)
class Event:
    seq: int
    ts: float  # device clock, seconds since the epoch
    kind: TelemetryKind
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind.value, "body": self.body}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Event:
        return cls(int(obj["seq"]), float(obj["ts"]), TelemetryKind(obj["kind"]), dict(obj["body"]))


@dataclass(frozen=True)
class Batch:
    stream: str  # random id of the device's spool; (device, stream, seq) identifies an event
    events: tuple[Event, ...]
    dropped_total: int = 0  # events the spool discarded to stay within its byte bound, ever

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def to_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "dropped_total": self.dropped_total,
                "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Batch:
        events = tuple(Event.from_json(e) for e in obj.get("events", ()))
        return cls(str(obj["stream"]), events, int(obj.get("dropped_total", 0)))


@dataclass(frozen=True)
class Ack:
    stored: int  # events newly stored by this call
    duplicates: int  # events the control plane already had (a retried batch)
    acked_seq: int  # every event of the batch up to this seq is safely stored
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRecord:
    """One finished (or failed) generation, as an edge server saw it."""

    prompt: str  # the user-visible prompt text (last user message for chat), for drift signals
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None  # request received -> first token
    total_s: float  # request received -> last token
    ok: bool = True
    error: str | None = None
    cancelled: bool = False
    token_logprobs: tuple[float, ...] = ()
    operation: str = "chat"


def encode_body(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False)


def validate_body(body: Any) -> dict[str, Any]:
    """A flat JSON object of scalars (strings, numbers, booleans, null), at most ``MAX_BODY_BYTES``."""
    if not isinstance(body, dict):
        raise ValueError("event body must be an object")
    for k, v in body.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, str | bool | int | float)):
            raise ValueError(f"event body field {k!r} must be a scalar")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"event body field {k!r} is not finite")
    if len(encode_body(body)) > MAX_BODY_BYTES:
        raise ValueError(f"event body larger than {MAX_BODY_BYTES} bytes")
    return body


def request_body(
    *,
    model_version: int | None,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_s: float | None,
    total_s: float,
    ok: bool = True,
    error: str | None = None,
    mean_logprob: float | None = None,
    prompt_chars: int | None = None,
    source: str = "serve",
) -> dict[str, Any]:
    """Body of a REQUEST event; time per output token is derived from TTFT and total time."""
    tpot_s = None
    if ttft_s is not None and completion_tokens > 1 and total_s >= ttft_s:
        tpot_s = (total_s - ttft_s) / (completion_tokens - 1)
    body: dict[str, Any] = {
        "model_version": model_version,
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "ttft_ms": None if ttft_s is None else round(ttft_s * 1000.0, 3),
        "tpot_ms": None if tpot_s is None else round(tpot_s * 1000.0, 3),
        "latency_ms": round(total_s * 1000.0, 3),
        "ok": bool(ok),
        "source": source,
    }
    if error:
        body["error"] = error[:500]
    if mean_logprob is not None and math.isfinite(mean_logprob):
        body["mean_logprob"] = round(float(mean_logprob), 6)
    if prompt_chars is not None:
        body["prompt_chars"] = int(prompt_chars)
    return body
