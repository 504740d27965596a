"""Drift on a device, end to end: a real Edge server (stories260K through llama.cpp, log-probabilities
on) feeds the telemetry recorder through its generation observers; the drift monitor captures its
reference from the first requests on the new version; windows travel through the spool and the
uploader to the control plane, where a drift alert shows on the dashboard and in /metrics, and
halts the rollout whose gate says ``drift_rate<0``."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import httpx
import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

from edgegen.drift.monitor import DriftMonitor
from edgegen.fleet.app import create_app
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig
from edgegen.runtime.engine import Engine, SamplingParams
from edgegen.serve import BackgroundServer, ServerConfig
from edgegen.serve import create_app as create_edge_app
from edgegen.telemetry.recorder import TelemetryRecorder
from edgegen.telemetry.spool import Spool
from edgegen.telemetry.uploader import HttpTransport, Uploader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drift"))
from test_drift_detection import docstring_prompts, shakespeare_prompts  # noqa: E402


def test_shifted_prompts_raise_a_drift_alert_that_halts_the_rollout(
        tmp_path: Path, stories_gguf: Path, shakespeare: Path) -> None:
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir))
    app.state.fleet.config.rollout_interval_s = 0  # no background loop: the test ticks explicitly
    cp = ThreadServer(app)
    client = RolloutClient(cp.url, ADMIN)
    edge = None
    try:
        reg.publish_bytes(client, "stories", 1, b"one" * 64)
        client.release("stories", 1)
        device = SimDevice(cp.url, client.enroll_token(model="stories"), "edge-drift")
        device.http_model = "stories"
        device.sync()
        reg.publish_bytes(client, "stories", 2, b"two" * 64)
        r = client.start("stories", 2, "all", stages="100", gates=["drift_rate<0@1", "error_rate<0.5@1"],
                         key=reg.keys.targets_key, bake_s=3600)  # bakes long: only a breach ends it here
        assert device.sync() == "switched" and device.active == 2

        spool = Spool(tmp_path / "device" / "spool.db")
        recorder = TelemetryRecorder(spool, drift=DriftMonitor(reference_size=100, window_size=50))
        recorder.model_active(2)  # the agent does this when it swaps the model in
        uploader = Uploader(spool, HttpTransport(cp.url, device.credential))
        edge_app = create_edge_app(lambda: Engine(stories_gguf, n_ctx=512, n_threads=1),
                                   ServerConfig(model_id="stories@v2", sampling=SamplingParams(logprobs=True)))
        edge_app.state.server.observers.append(recorder.observe_generation)
        edge = BackgroundServer(edge_app).start()
        rng = random.Random(5)
        same = shakespeare_prompts(shakespeare, rng, 200)
        shifted = docstring_prompts(rng, 50)

        with httpx.Client(base_url=edge.url, timeout=60) as http:
            _wait_ready(http)

            def ask(prompts: list[str]) -> None:
                for p in prompts:
                    resp = http.post("/v1/chat/completions", json={
                        "model": "stories@v2", "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": p[:300]}]})
                    assert resp.status_code == 200, resp.text

            ask(same[:150])  # 100 for the reference, then one window of the same distribution
            assert uploader.flush().ok
            client.tick()
            assert client.show(r["id"])["state"] == "running"  # no drift: the gate holds
            ask(shifted)  # a window of prompts from another distribution
            assert uploader.flush().ok
        reports = recorder.reports
        assert [rep.drift for rep in reports] == [False, True]
        assert all("mean_logprob" in {f.name for f in rep.features} for rep in reports)
        client.tick()
        halted = client.show(r["id"])
        assert halted["state"] == "halted" and "drift_rate=1" in halted["reason"]
        metrics = client.metrics()
        assert f'edgegen_drift_alerts_total{{device="{device.id}",model_version="2"}} 1' in metrics
        assert f'edgegen_drift_windows_total{{device="{device.id}",model_version="2"}} 2' in metrics
        with httpx.Client(base_url=cp.url, follow_redirects=True) as console:
            console.post("/login", data={"token": ADMIN, "next": "/console/drift"})
            page = console.get("/console/drift").text
        assert page.count('class="drift-alert"') == 1 and ("letters" in page or "frac_" in page)
        print(f"\ndevice drift: window 1 (Shakespeare) {reports[0].reasons or 'no drift'}; window 2 "
              f"(stdlib docstrings) drift: {'; '.join(reports[1].reasons)}; rollout halted: {halted['reason']}")
    finally:
        if edge is not None:
            edge.stop()
        client.close()
        cp.stop()


def _wait_ready(http: httpx.Client) -> None:
    import time

    deadline = time.monotonic() + 60
    while http.get("/health").status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail("the edge server did not load the model")
        time.sleep(0.1)
