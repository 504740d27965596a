"""Field fault: a device whose clock ran 1 h behind reported 10 of 20 requests failed, and the rollout
still completed "healthy", because stage windows compared device timestamps with the control plane's
stage start. Every gate must halt the same bad rollout whether device clocks are right, 1 h behind
or 1 h ahead (the control plane windows reports by receipt time).

Real control plane on 127.0.0.1, simulated devices over HTTP, explicit ticks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

from edgegen.fleet.app import create_app
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig

HOUR = 3600.0
SKEWS = {"right": 0.0, "1h_behind": -HOUR, "1h_ahead": HOUR}

# gate -> how the bad version behaves on a device, given its clock's skew
BAD = {
    "error_rate<0.1@2": lambda d, skew: d.requests(20, 0.1, ok=False, ts=time.time() + skew),
    "p95_latency_ms<500@2": lambda d, skew: d.requests(20, 2.0, ts=time.time() + skew),
    "p95_latency_ratio<2@2": lambda d, skew: d.requests(20, 1.0, ts=time.time() + skew),
    "logprob_drop<0.5@2": lambda d, skew: d.requests(20, 0.1, ts=time.time() + skew, mean_logprob=-3.0),
    "drift_rate<0.4@2": lambda d, skew: (d.requests(5, 0.1, ts=time.time() + skew), d.drift(ts=time.time() + skew)),
    "update_failure_rate<0@1": None,  # the install fails: reported as an event, stamped on receipt
}


@pytest.fixture()
def plane(tmp_path: Path):
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir))
    app.state.fleet.config.rollout_interval_s = 0  # no background loop: the test ticks
    server = ThreadServer(app)
    client = RolloutClient(server.url, ADMIN)
    yield reg, client, server
    client.close()
    server.stop()
    app.state.fleet.engine.dispose()


@pytest.mark.parametrize("skew", list(SKEWS), ids=list(SKEWS))
@pytest.mark.parametrize("gate", list(BAD))
def test_bad_rollout_halts_whatever_the_device_clocks(plane, gate: str, skew: str) -> None:
    reg, client, server = plane
    offset = SKEWS[skew]
    reg.publish_bytes(client, "smol", 1, b"model one" * 100)
    client.release("smol", 1)
    devices = [SimDevice(server.url, client.enroll_token(model="smol", group="g"), f"d{i}") for i in range(4)]
    for d in devices:
        d.sync()
        d.requests(20, 0.1, ts=time.time() + offset)  # the old version's baseline, on the skewed clocks
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    if BAD[gate] is None:
        for d in devices:
            d.bad = {2}
    # a real-traffic gate must decide: no "advance on install health" while reports come in
    rid = client.start("smol", 2, "g", stages="50,100", gates=[gate], key=reg.keys.targets_key,
                       on_no_traffic="wait")["id"]
    for _ in range(4):
        for d in devices:
            d.sync()
            if d.active == 2 and BAD[gate] is not None:
                BAD[gate](d, offset)
        client.tick()
        if client.show(rid)["state"] != "running":
            break
    r = client.show(rid)
    assert r["state"] == "halted", (gate, skew, r["state"], r["last_decision"], r["reason"])
    metric = gate.split("<")[0]
    assert metric in r["reason"]
    assert r["percent"] == 50  # halted at the first stage: the bad version never reached everyone
