"""The device recorder: request events from generation records, drift windows, model switches,
memory samples, remote logs; and the agent-side wrapper around the ModelServer seam."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgegen.drift.monitor import DriftMonitor, DriftThresholds
from edgegen.telemetry.device import DeviceTelemetry
from edgegen.telemetry.events import GenerationRecord, TelemetryKind
from edgegen.telemetry.recorder import TelemetryRecorder
from edgegen.telemetry.spool import Spool


def kinds(spool: Spool) -> list[str]:
    return [e.kind.value for e in spool.peek(limit=10_000, max_bytes=10**9)]


def test_generation_records_become_request_events_and_drift_windows(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        rec = TelemetryRecorder(spool, drift=DriftMonitor(20, 10, DriftThresholds(min_samples=5)),
                                drift_state=tmp_path / "drift.json", model_version=3)
        for i in range(30):
            rec.observe_generation(GenerationRecord(
                prompt=f"a short plain sentence number {i}", prompt_tokens=9, completion_tokens=4, ttft_s=0.02,
                total_s=0.08, token_logprobs=(-1.0, -2.0, -0.5, -0.5)))
        rec.observe_generation(GenerationRecord(prompt="", prompt_tokens=0, completion_tokens=0, ttft_s=None,
                                                total_s=0.0, cancelled=True))  # a cancelled no-op: skipped
        rec.observe_generation(GenerationRecord(prompt="boom", prompt_tokens=3, completion_tokens=0, ttft_s=None,
                                                total_s=0.01, ok=False, error="EngineError: decode"))
        events = spool.peek(limit=1000)
        reqs = [e for e in events if e.kind is TelemetryKind.REQUEST]
        assert len(reqs) == 31
        first = reqs[0].body
        assert first["model_version"] == 3 and first["mean_logprob"] == -1.0 and first["tpot_ms"] == 20.0
        assert reqs[-1].body["ok"] is False and reqs[-1].body["error"] == "EngineError: decode"
        drift = [e for e in events if e.kind is TelemetryKind.DRIFT]
        assert len(drift) == 1 and drift[0].body["window"] == 1 and drift[0].body["drift"] is False
        assert json.loads((tmp_path / "drift.json").read_text())["reference"]["n"] == 20


def test_drift_state_survives_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        rec = TelemetryRecorder(spool, drift=DriftMonitor(20, 10), drift_state=tmp_path / "d.json", model_version=1)
        for i in range(25):
            rec.request(prompt=f"hello {i}", prompt_tokens=2, completion_tokens=2, ttft_s=0.01, total_s=0.02)
        again = TelemetryRecorder(spool, drift=DriftMonitor(20, 10), drift_state=tmp_path / "d.json")
        assert again.drift is not None and again.drift.reference.n == 20 and again.drift.model_version == 1


def test_model_switch_memory_and_remote_logs(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        rec = TelemetryRecorder(spool, drift=DriftMonitor(5, 5), model_version=1)
        rec.model_active(2)
        rec.model_active(2)  # unchanged: no second event
        rec.memory()
        handler = rec.log_handler(logging.WARNING)
        logger = logging.getLogger("edgegen.agent.test")
        logger.addHandler(handler)
        try:
            logger.info("not shipped")
            logger.warning("disk %d%% full", 93)
            logging.getLogger("edgegen.telemetry.spool").addHandler(handler)
            logging.getLogger("edgegen.telemetry.spool").warning("never about itself")
        finally:
            logger.removeHandler(handler)
            logging.getLogger("edgegen.telemetry.spool").removeHandler(handler)
        events = spool.peek(limit=100)
        assert [e.kind.value for e in events] == ["model", "memory", "log"]
        assert events[0].body == {"model_version": 2, "previous_version": 1}
        assert events[1].body["rss_bytes"] > 0
        assert events[2].body["message"] == "disk 93% full" and events[2].body["level"] == "WARNING"


class FakeServer:
    def __init__(self) -> None:
        self.url = "http://127.0.0.1:1"
        self.observers: list = []
        self.started: list[Path] = []

    def start(self, model_path: Path, **kw: object) -> None:
        self.started.append(model_path)

    def swap(self, model_path: Path, **kw: object) -> None:
        self.started.append(model_path)

    def stop(self) -> None:
        pass


def test_device_telemetry_wraps_the_model_server(tmp_path: Path) -> None:
    (tmp_path / "active.json").write_text(json.dumps({"slot": "a", "version": 4}))
    tel = DeviceTelemetry.open(tmp_path, spool_bytes=1 << 20, remote_log_level=None)
    inner = FakeServer()
    server = tel.wrap(inner)
    assert inner.observers == [tel.recorder.observe_generation] and server.url == inner.url
    server.start(tmp_path / "m.gguf")
    (tmp_path / "active.json").write_text(json.dumps({"slot": "b", "version": 5}))
    server.swap(tmp_path / "m2.gguf")
    assert tel.start() is False  # not enrolled yet: nothing to upload with
    models = [e.body for e in tel.spool.peek() if e.kind is TelemetryKind.MODEL]
    assert models == [{"model_version": 4, "previous_version": None},  # announced at start
                      {"model_version": 5, "previous_version": 4}]
    assert tel.recorder.model_version == 5
    tel.close()
