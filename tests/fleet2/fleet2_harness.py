"""Test harness for Fleet II: a real control plane on 127.0.0.1 (thread or subprocess), a keyring,
publishing helpers and simulated devices that speak the real device API over HTTP."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgegen.fleet.keys import Keyring
from edgegen.fleet.publish import build_release
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.telemetry.events import Batch, Event, TelemetryKind, request_body

ADMIN = "admin-token-for-tests"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving an app in a daemon thread (lifespan on)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


SERVE_SCRIPT = """
import sys, uvicorn
from pathlib import Path
from edgegen.fleet.app import create_app
from edgegen.fleet.state import ControlPlaneConfig
data, keys, token, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
app = create_app(ControlPlaneConfig(data_dir=Path(data), admin_token=token, keys_dir=Path(keys)))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


class ProcessServer:
    """The control plane in its own process (so a test can stop and restart it)."""

    def __init__(self, data_dir: Path, keys_dir: Path, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir, self.keys_dir = data_dir, keys_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessServer:
        log = open(self.data_dir.parent / f"control-plane-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, str(self.data_dir), str(self.keys_dir), ADMIN, str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "control plane exited"
            assert time.monotonic() < deadline, "control plane did not come up"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@dataclass
class Registry:
    """The operator's side: a keyring and a work dir to build releases in."""

    keys: Keyring
    work: Path
    shas: dict[int, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Registry:
        return cls(Keyring.init(root / "keys"), root / "work")

    def publish_bytes(self, client: RolloutClient, name: str, version: int, data: bytes) -> str:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / f"{name}-{version}.bin"
        path.write_bytes(data)
        rel = build_release(path, name=name, version=version, key=self.keys.targets_key, work_dir=self.work,
                            architecture="test", quantization="none", zstd_level=None)
        client.publish(rel)
        self.shas[version] = rel.manifest.sha256
        return rel.manifest.sha256

    def publish_file(self, client: RolloutClient, name: str, version: int, path: Path, zstd: bool = True) -> str:
        rel = build_release(path, name=name, version=version, key=self.keys.targets_key, work_dir=self.work,
                            zstd_level=3 if zstd else None)
        client.publish(rel)
        self.shas[version] = rel.manifest.sha256
        return rel.manifest.sha256


class SimDevice:
    """A device that speaks the real device API but installs instantly (no model, no agent)."""

    def __init__(self, url: str, token: str, name: str) -> None:
        r = httpx.post(url + "/v1/enroll", json={"token": token, "name": name}, timeout=10)
        r.raise_for_status()
        body = r.json()
        self.id: str = body["device_id"]
        self.credential: str = body["credential"]
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {body['credential']}"},
                                 timeout=10)
        self.active: int | None = None
        self.received: list[int] = []
        self.bad: set[int] = set()  # versions whose health check fails here
        self.seq = 0

    def report(self, kind: str, version: int | None, ok: bool = True, reason: str | None = None) -> None:
        r = self.http.post("/v1/device/report", json={"kind": kind, "ok": ok, "version": version,
                                                      "active_version": self.active, "reason": reason})
        r.raise_for_status()

    def sync(self) -> str:
        desired = self.http.get("/v1/device/desired").json()["version"]
        if desired is None or desired == self.active:
            return "current"
        if self.active is not None and desired < self.active:
            self.report("update_refused", desired, ok=False, reason="RollbackError")
            return "refused"
        manifest = self.http.get(f"/v1/device/manifests/{self.http_model}/{desired}")
        manifest.raise_for_status()
        self.received.append(desired)
        if desired in self.bad:
            self.report("health_failed", desired, ok=False, reason="HealthCheckError: does not load")
            return "health_failed"
        self.active = desired
        self.report("switched", desired)
        return "switched"

    http_model = "smol"

    def drift(self, ts: float | None = None) -> None:
        """Post a drift alert on the running version, stamped ``ts`` by the device's clock."""
        self.seq += 1
        body = {"drift": True, "model_version": self.active, "window": 1, "reasons": "letters: JS 0.05 bits > 0.02"}
        r = self.http.post("/v1/telemetry", json=Batch("sim" + self.id[:8], (
            Event(self.seq, ts or time.time(), TelemetryKind.DRIFT, body),)).to_json())
        r.raise_for_status()

    def status(self, client: Any) -> dict[str, Any]:
        return next(d for d in client.devices() if d["id"] == self.id)

    def requests(self, n: int, latency_s: float, ok: bool = True, ts: float | None = None,
                 mean_logprob: float = -1.2) -> dict[str, Any]:
        """Post ``n`` request events stamped ``ts`` by the device's clock (default: now)."""
        events = []
        for _ in range(n):
            self.seq += 1
            body = request_body(model_version=self.active, prompt_tokens=12, completion_tokens=8,
                                ttft_s=latency_s / 4, total_s=latency_s, ok=ok, mean_logprob=mean_logprob)
            events.append(Event(self.seq, ts or time.time(), TelemetryKind.REQUEST, body))
        r = self.http.post("/v1/telemetry", json=Batch("sim" + self.id[:8], tuple(events)).to_json())
        r.raise_for_status()
        return r.json()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
