"""Telemetry: device-side spool and uploader, control-plane ingest and Prometheus export.

Device side (no SQLAlchemy needed): ``events``, ``spool``, ``uploader``, ``recorder``.
Control-plane side: ``store`` (tables, idempotent ingest), ``rollup`` (counters, exposition),
``edgegen.fleet.routes.telemetry`` (HTTP). Import the submodules; this package re-exports nothing
heavy so a device can import it without the control plane's dependencies.
"""

from __future__ import annotations

from edgegen.telemetry.events import Ack, Batch, Event, TelemetryKind, request_body
from edgegen.telemetry.spool import Spool, SpoolStats

__all__ = ["Ack", "Batch", "Event", "TelemetryKind", "request_body", "Spool", "SpoolStats"]
