"""The device's telemetry front door: what the agent and the edge server call to record events.

    TelemetryRecorder(spool, drift=DriftMonitor(...), drift_state=path)
        .request(prompt=, prompt_tokens=, completion_tokens=, ttft_s=, total_s=, ok=, error=,
                 token_logprobs=)      a REQUEST event; its signals feed the drift monitor, and each
                                       completed window becomes a DRIFT event (alert or not)
        .observe_generation(record)    the same from an edge-server generation record (duck-typed:
                                       prompt, prompt_tokens, completion_tokens, ttft_s, total_s,
                                       ok, error, token_logprobs, cancelled)
        .model_active(version)         a MODEL event; the drift reference restarts for a new version
        .memory()                      a MEMORY event (process RSS, system available memory)
        .log_handler(level)            a ``logging.Handler`` that spools records as LOG events

Recording never raises into the caller's request path: spool failures are counted in
``errors`` and logged at debug level. Uploading is ``uploader.py``'s job.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgegen.drift.monitor import DriftMonitor, DriftReport
from edgegen.drift.signals import request_signals
from edgegen.durable import atomic_write
from edgegen.errors import TelemetryError
from edgegen.telemetry.events import TelemetryKind, request_body
from edgegen.telemetry.spool import Spool

log = logging.getLogger(__name__)


class TelemetryRecorder:
    def __init__(self, spool: Spool, *, drift: DriftMonitor | None = None, drift_state: Path | None = None,
                 model_version: int | None = None, source: str = "serve") -> None:
        self.spool = spool
        self.drift = drift
        self.drift_state = Path(drift_state) if drift_state else None
        self.model_version = model_version
        self.source = source
        self.errors = 0
        self.reports: list[DriftReport] = []  # the last few, for tests and `agent status`
        self._lock = threading.Lock()
        if self.drift is not None and self.drift_state is not None and self.drift_state.exists():
            try:
                state = json.loads(self.drift_state.read_text())
                self.drift = DriftMonitor.from_json(state, self.drift.thresholds)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("drift state %s unreadable, starting over: %s", self.drift_state, exc)

    # ---- internals ----------------------------------------------------------------------------

    def _append(self, kind: TelemetryKind, body: dict[str, Any]) -> int | None:
        try:
            return self.spool.append(kind, body)
        except TelemetryError as exc:
            self.errors += 1
            log.debug("telemetry not recorded: %s", exc)
            return None

    def _save_drift(self) -> None:
        if self.drift is None or self.drift_state is None:
            return
        atomic_write(self.drift_state, json.dumps(self.drift.to_json()).encode(), label="drift_state")

    # ---- API ----------------------------------------------------------------------------------

    def model_active(self, version: int | None, *, announce: bool = False) -> None:
        """``version`` serves from now on: a MODEL event when it changed (or ``announce``, e.g. at start)."""
        with self._lock:
            previous = self.model_version
            changed = version != previous
            self.model_version = version
            if self.drift is not None:
                self.drift.start_version(version)
                self._save_drift()
        if changed or announce:
            self._append(TelemetryKind.MODEL, {"model_version": version,
                                               "previous_version": previous if changed else None})

    def request(self, *, prompt: str = "", prompt_tokens: int, completion_tokens: int, ttft_s: float | None,
                total_s: float, ok: bool = True, error: str | None = None,
                token_logprobs: Sequence[float] | None = None, model_version: int | None = None) -> None:
        signals = request_signals(prompt, token_logprobs) if ok else None
        version = self.model_version if model_version is None else model_version
        body = request_body(model_version=version, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, ttft_s=ttft_s, total_s=total_s, ok=ok,
                            error=error, mean_logprob=signals.numeric.get("mean_logprob") if signals else None,
                            prompt_chars=len(prompt), source=self.source)
        self._append(TelemetryKind.REQUEST, body)
        if signals is None or self.drift is None:
            return
        with self._lock:
            report = self.drift.observe(signals, version)
            if report is not None or self.drift.reference.n == self.drift.reference_size or \
                    self.drift.window.n % 25 == 0:
                self._save_drift()
        if report is not None:
            self.reports = (self.reports + [report])[-20:]
            self._append(TelemetryKind.DRIFT, report.event_body())
            if report.drift:
                log.warning("drift on v%s window %d: %s", version, report.window_index, "; ".join(report.reasons))

    def observe_generation(self, record: Any) -> None:
        """Adapter for the edge server's per-generation callback."""
        if getattr(record, "cancelled", False) and not getattr(record, "completion_tokens", 0):
            return
        self.request(prompt=getattr(record, "prompt", "") or "", prompt_tokens=int(record.prompt_tokens),
                     completion_tokens=int(record.completion_tokens), ttft_s=getattr(record, "ttft_s", None),
                     total_s=float(getattr(record, "total_s", 0.0) or 0.0), ok=bool(getattr(record, "ok", True)),
                     error=getattr(record, "error", None), token_logprobs=getattr(record, "token_logprobs", None))

    def memory(self) -> None:
        try:
            import psutil

            rss = psutil.Process().memory_info().rss
            avail = psutil.virtual_memory().available
        except Exception as exc:  # psutil missing or /proc unreadable: nothing to report
            log.debug("memory not sampled: %s", exc)
            return
        self._append(TelemetryKind.MEMORY, {"rss_bytes": int(rss), "available_bytes": int(avail),
                                            "model_version": self.model_version})

    def log_handler(self, level: int = logging.WARNING) -> logging.Handler:
        return _SpoolLogHandler(self, level)


class _SpoolLogHandler(logging.Handler):
    def __init__(self, recorder: TelemetryRecorder, level: int) -> None:
        super().__init__(level)
        self.recorder = recorder
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False) or record.name.startswith("edgegen.telemetry"):
            return  # never log about logging (a failing spool would recurse)
        self._local.busy = True
        try:
            self.recorder._append(TelemetryKind.LOG, {
                "level": record.levelname, "logger": record.name[:100], "message": record.getMessage()[:2000],
                "model_version": self.recorder.model_version})
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False
