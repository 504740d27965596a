"""Store-and-forward upload: spool -> batches -> a one-method ``Transport`` -> ack -> spool.ack.

    Transport        ``send(batch) -> Ack``; raises ``TelemetryError`` when the batch did not arrive
    HttpTransport    POST ``<server>/v1/telemetry`` with the device credential (httpx)
    Uploader         ``flush()``: send the oldest pending events in seq-ordered batches until the
                     spool is empty or the transport fails; only acknowledged events leave the spool
    UploadThread     runs ``flush`` every ``interval_s``, backing off exponentially while offline
    (retry delays: ``edgegen.backoff.backoff_delay``)

At-least-once delivery plus an idempotent control plane gives exactly-once storage: an event leaves
the spool only after the control plane said it is stored, and a batch re-sent after a crash between
"stored" and "acked" is recognised by its (stream, seq) and stored once. This module does not decide
what to record (see ``recorder.py``).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from edgegen.backoff import backoff_delay
from edgegen.errors import TelemetryError
from edgegen.telemetry.events import MAX_BATCH_EVENTS, Ack, Batch
from edgegen.telemetry.spool import Spool

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, batch: Batch) -> Ack: ...


class HttpTransport:
    """Posts batches to the control plane; any failure to get a 200 with an ack is a ``TelemetryError``."""

    def __init__(self, server_url: str, credential: str, *, timeout_s: float = 10.0,
                 client: httpx.Client | None = None, verify: ssl.SSLContext | None = None) -> None:
        self.url = server_url.rstrip("/") + "/v1/telemetry"
        self._headers = {"Authorization": f"Bearer {credential}"}
        self._client = client or httpx.Client(timeout=timeout_s, verify=verify if verify is not None else True)

    def send(self, batch: Batch) -> Ack:
        try:
            resp = self._client.post(self.url, json=batch.to_json(), headers=self._headers)
        except httpx.HTTPError as exc:
            raise TelemetryError(f"telemetry upload to {self.url} failed: {exc}") from exc
        if resp.status_code != 200:
            raise TelemetryError(f"telemetry upload refused: HTTP {resp.status_code} {resp.text[:200]}")
        try:
            data: dict[str, Any] = resp.json()
            return Ack(int(data["stored"]), int(data["duplicates"]), int(data["acked_seq"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TelemetryError(f"telemetry upload: malformed ack {resp.text[:200]!r}") from exc

    def close(self) -> None:
        self._client.close()


@dataclass
class UploadReport:
    batches: int = 0
    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    acked_seq: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Uploader:
    def __init__(self, spool: Spool, transport: Transport, *, batch_events: int = 500,
                 batch_bytes: int = 256 * 1024) -> None:
        self.spool = spool
        self.transport = transport
        self.batch_events = max(1, min(batch_events, MAX_BATCH_EVENTS))
        self.batch_bytes = batch_bytes
        self._lock = threading.Lock()  # one flush at a time per spool

    def flush(self, max_batches: int | None = None) -> UploadReport:
        report = UploadReport()
        with self._lock:
            while max_batches is None or report.batches < max_batches:
                events = self.spool.peek(self.batch_events, self.batch_bytes)
                if not events:
                    break
                batch = Batch(self.spool.stream, tuple(events), self.spool.stats().dropped)
                try:
                    ack = self.transport.send(batch)
                except TelemetryError as exc:
                    report.error = str(exc)
                    break
                report.batches += 1
                report.sent += len(events)
                report.stored += ack.stored
                report.duplicates += ack.duplicates
                upto = min(ack.acked_seq, batch.last_seq)
                if upto < events[0].seq:  # the control plane stored nothing of it: do not spin
                    report.error = f"control plane acknowledged seq {ack.acked_seq}, below {events[0].seq}"
                    break
                self.spool.ack(upto)
                report.acked_seq = upto
        return report


class UploadThread:
    """A daemon thread flushing ``uploader`` every ``interval_s`` (sooner after ``kick()``)."""

    def __init__(self, uploader: Uploader, *, interval_s: float = 5.0, max_backoff_s: float = 300.0) -> None:
        self.uploader = uploader
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.failures = 0
        self.last_report: UploadReport | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry-upload", daemon=True)

    def start(self) -> UploadThread:
        self._thread.start()
        return self

    def kick(self) -> None:
        self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.uploader.flush()
            except TelemetryError as exc:  # the spool itself failed (disk): keep trying
                report = UploadReport(error=str(exc))
            self.last_report = report
            if report.ok:
                self.failures = 0
                delay = self.interval_s
            else:
                self.failures += 1
                delay = backoff_delay(self.failures, min(self.interval_s, 1.0), self.max_backoff_s)
                log.debug("telemetry upload failed (%d in a row): %s", self.failures, report.error)
            self._kick.wait(delay)
            self._kick.clear()

    def stop(self, flush: bool = True, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout_s)
        if flush:
            try:
                self.uploader.flush()
            except TelemetryError as exc:  # shutting down: what is left stays spooled for next time
                log.debug("final telemetry flush failed: %s", exc)
