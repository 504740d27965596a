"""Telemetry wiring for a device agent: spool + recorder + drift monitor + background uploader.

    DeviceTelemetry.open(data_dir, spool_bytes=, upload_interval_s=, ...)
        .wrap(server)        a ``ModelServer`` (agent seam) that records a MODEL event whenever the
                             agent starts or swaps the served model, and subscribes the recorder to
                             the server's per-generation records when it offers ``observers``
        .start(server_url, credential)   begin uploading (store-and-forward) to the control plane
        .sample_memory()     a MEMORY event (the agent calls it once per poll)
        .close()             stop uploading (one last flush attempt) and close the spool

Files under ``<data_dir>/telemetry/``: ``spool.db`` (SQLite WAL) and ``drift.json`` (the drift
monitor's reference and current window, so a restart neither loses nor recaptures them).
The agent's own logic is untouched: everything goes through the ``ModelServer`` seam and the
credential file the agent wrote at enrolment.
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

from edgegen.drift.monitor import DriftMonitor, DriftThresholds
from edgegen.sealed import RowCipher
from edgegen.telemetry.recorder import TelemetryRecorder
from edgegen.telemetry.spool import Spool
from edgegen.telemetry.uploader import HttpTransport, Uploader, UploadThread

log = logging.getLogger(__name__)


def _active_version(data_dir: Path) -> int | None:
    path = data_dir / "active.json"
    try:
        return int(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class TelemetryServer:
    """Wraps the agent's ``ModelServer``: same behaviour, plus model-version events."""

    def __init__(self, inner: Any, telemetry: DeviceTelemetry) -> None:
        self.inner = inner
        self.telemetry = telemetry
        observers = getattr(inner, "observers", None)
        if isinstance(observers, list):
            observers.append(telemetry.recorder.observe_generation)

    @property
    def url(self) -> str | None:
        return getattr(self.inner, "url", None)

    def _note(self, announce: bool = False) -> None:
        self.telemetry.recorder.model_active(_active_version(self.telemetry.data_dir), announce=announce)

    def start(self, model_path: Path, **kw: Any) -> None:
        self.inner.start(model_path, **kw)
        self._note(announce=True)

    def swap(self, model_path: Path, **kw: Any) -> None:
        self.inner.swap(model_path, **kw)
        self._note()

    def stop(self) -> None:
        self.inner.stop()

    def __getattr__(self, name: str) -> Any:  # anything else the agent or tests use
        return getattr(self.inner, name)


class DeviceTelemetry:
    def __init__(self, data_dir: Path, recorder: TelemetryRecorder, upload_interval_s: float) -> None:
        self.data_dir = Path(data_dir)
        self.recorder = recorder
        self.spool = recorder.spool
        self.upload_interval_s = upload_interval_s
        self.uploader: Uploader | None = None
        self.thread: UploadThread | None = None
        self._log_handler: logging.Handler | None = None

    @classmethod
    def open(cls, data_dir: Path, *, spool_bytes: int = 16 * 1024**2, upload_interval_s: float = 10.0,
             drift_reference: int = 200, drift_window: int = 100,
             thresholds: DriftThresholds = DriftThresholds(), remote_log_level: int | None = logging.WARNING,
             durable: bool = False, key: bytes | None = None) -> DeviceTelemetry:
        """``key``: the device's at-rest key: event bodies in the spool are sealed with it."""
        tdir = Path(data_dir) / "telemetry"
        spool = Spool(tdir / "spool.db", spool_bytes, durable=durable, cipher=RowCipher(key) if key else None)
        recorder = TelemetryRecorder(spool, drift=DriftMonitor(drift_reference, drift_window, thresholds),
                                     drift_state=tdir / "drift.json", model_version=_active_version(Path(data_dir)))
        dt = cls(Path(data_dir), recorder, upload_interval_s)
        if remote_log_level is not None:
            dt._log_handler = recorder.log_handler(remote_log_level)
            logging.getLogger("edgegen").addHandler(dt._log_handler)
        return dt

    def wrap(self, server: Any) -> TelemetryServer:
        return TelemetryServer(server, self)

    def credential(self) -> tuple[str, str] | None:
        """(server URL, credential) from the agent's ``credential.json``, once enrolled; None when it
        is sealed (an agent with an at-rest key): then the caller passes ``Agent.credential()``."""
        path = self.data_dir / "credential.json"
        try:
            cred = json.loads(path.read_text())
            return str(cred["server"]), str(cred["credential"])
        except (OSError, ValueError, KeyError):
            return None

    def start(self, server_url: str | None = None, credential: str | None = None,
              verify: ssl.SSLContext | None = None) -> bool:
        """Start uploading; False (and nothing started) while the device is not enrolled.

        ``verify``: the agent's TLS context (pinned fleet CA, device certificate) for https."""
        if self.thread is not None:
            return True
        if credential is None:
            found = self.credential()
            if found is None:
                return False
            server_url = server_url or found[0]
            credential = found[1]
        assert server_url is not None
        self.uploader = Uploader(self.spool, HttpTransport(server_url, credential, verify=verify))
        self.thread = UploadThread(self.uploader, interval_s=self.upload_interval_s).start()
        return True

    def sample_memory(self) -> None:
        self.recorder.memory()

    def close(self, flush: bool = True) -> None:
        if self._log_handler is not None:
            logging.getLogger("edgegen").removeHandler(self._log_handler)
            self._log_handler = None
        if self.thread is not None:
            self.thread.stop(flush=flush)
            self.thread = None
        self.spool.close()
