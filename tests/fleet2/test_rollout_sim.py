"""Rollouts through the real control plane (HTTP on 127.0.0.1, real SQLite, signed versions) with
simulated devices that install instantly: the stage walk, a failing health check, a latency
regression with automatic rollback, operator pause/resume/abort, and the rollback version's bytes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

from edgegen.errors import UserInputError
from edgegen.fleet.app import create_app
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig

GATES = ["update_failure_rate<0@1", "error_rate<0.1@1", "p95_latency_ms<500@1"]


@pytest.fixture(params=["sqlite"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path):
    db_url = None
    if request.param == "postgresql":
        from fleet_kit import fresh_database

        db = fresh_database(request.getfixturevalue("pg_admin_url"))
        db_url = db.__enter__()
        request.addfinalizer(lambda: db.__exit__(None, None, None))
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir,
                                        db_url=db_url))
    app.state.fleet.config.rollout_interval_s = 0  # no background loop: the test ticks explicitly
    server = ThreadServer(app)
    client = RolloutClient(server.url, ADMIN)
    reg.publish_bytes(client, "smol", 1, b"model one" * 100)
    assert client.release("smol", 1)["released_version"] == 1  # publishing ships nothing: release v1 at once
    token = lambda: client.enroll_token(model="smol", group="g")  # noqa: E731
    devices = [SimDevice(server.url, token(), f"d{i}") for i in range(10)]
    for d in devices:
        d.sync()
    assert {d.active for d in devices} == {1}
    yield reg, client, devices
    client.close()
    server.stop()
    app.state.fleet.engine.dispose()


def settle(client: RolloutClient, devices: list[SimDevice], rid: int, latency_s: float = 0.1,
           rounds: int = 6) -> dict:
    """Devices sync and report traffic, the control plane ticks; until the rollout stops moving."""
    r = client.show(rid)
    for _ in range(rounds):
        for d in devices:
            d.sync()
            d.requests(5, latency_s if d.active == r["version"] else 0.1)
        client.tick()
        r = client.show(rid)
        if r["state"] != "running":
            break
    return r


def stage_walk(client: RolloutClient, devices: list[SimDevice], rid: int) -> list[int]:
    seen = []
    for _ in range(10):
        r = client.show(rid)
        seen.append(r["percent"]) if not seen or seen[-1] != r["percent"] else None
        if r["state"] != "running":
            break
        for d in devices:
            d.sync()
            d.requests(3, 0.1)
        client.tick()
    return seen


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_good_version_walks_10_50_100(fleet) -> None:
    reg, client, devices = fleet
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    r = client.start("smol", 2, "g", stages="10,50,100", gates=GATES, key=reg.keys.targets_key)
    assert r["rollback_version"] == 3 and len(r["members"]) == 1
    # before any tick only the canary is offered v2
    for d in devices:
        d.sync()
    assert sorted(d.active for d in devices) == [1] * 9 + [2]
    assert stage_walk(client, devices, r["id"]) == [10, 50, 100]
    final = client.show(r["id"])
    assert final["state"] == "completed"
    assert {d.active for d in devices} == {2}
    assert [e["action"] for e in final["events"]] == ["created", "advance", "advance", "complete"]
    # the pre-signed rollback version was never handed out
    assert all(3 not in d.received for d in devices)


def test_failing_health_check_stops_at_the_canary(fleet) -> None:
    reg, client, devices = fleet
    reg.publish_bytes(client, "smol", 2, b"broken" * 100)
    for d in devices:
        d.bad.add(2)
    r = client.start("smol", 2, "g", gates=GATES, key=reg.keys.targets_key)
    final = settle(client, devices, r["id"])
    assert final["state"] == "halted" and final["percent"] == 10
    assert "update_failure_rate" in final["reason"]
    (canary,) = [d for d in devices if d.id in final["members"]]
    assert canary.received == [1, 2] and canary.active == 1
    others = [d for d in devices if d is not canary]
    assert all(2 not in d.received for d in others)  # the others never received it
    assert {d.active for d in devices} == {1}


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_latency_regression_rolls_the_canary_back(fleet) -> None:
    reg, client, devices = fleet
    reg.publish_bytes(client, "smol", 2, b"slow model" * 100)
    r = client.start("smol", 2, "g", gates=GATES, key=reg.keys.targets_key)
    final = settle(client, devices, r["id"], latency_s=2.0)
    assert final["state"] == "halted" and "p95_latency_ms" in final["reason"]
    for d in devices:
        d.sync()
    (canary,) = [d for d in devices if d.id in final["members"]]
    assert canary.received == [1, 2, 3] and canary.active == 3  # v3 = v1's bytes, signed at start
    assert reg.shas.get(3) is None  # v3 was signed by the client, not uploaded as bytes
    models = {m["name"]: m for m in client.models()}["smol"]["versions"]
    by_v = {v["version"]: v["sha256"] for v in models}
    assert by_v[3] == by_v[1] != by_v[2]
    assert all(2 not in d.received and d.active == 1 for d in devices if d is not canary)


def test_operator_pause_resume_abort(fleet) -> None:
    reg, client, devices = fleet
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    r = client.start("smol", 2, "g", gates=GATES, key=reg.keys.targets_key)
    rid = r["id"]
    assert client.pause(rid)["state"] == "paused"
    for _ in range(2):
        for d in devices:
            d.sync()
            d.requests(3, 0.1)
        client.tick()
    assert client.show(rid)["percent"] == 10  # paused: no stage opens
    with pytest.raises(UserInputError):
        client.pause(rid)
    assert client.resume(rid)["state"] == "running"
    client.tick()
    assert client.show(rid)["percent"] == 10  # resumed: the stage is measured afresh
    for d in devices:
        d.requests(3, 0.1)
    client.tick()
    assert client.show(rid)["percent"] == 50
    for d in devices:
        d.sync()
    touched = [d for d in devices if d.active == 2]
    assert len(touched) == 5
    assert client.abort(rid, "changed my mind")["state"] == "aborted"
    for d in devices:
        d.sync()
    assert {d.active for d in touched} == {3} and {d.active for d in devices if d not in touched} == {1}
    with pytest.raises(UserInputError):
        client.resume(rid)


def test_unstaged_model_follows_the_newest_version(fleet) -> None:
    reg, client, devices = fleet
    client.policy("smol", staged=False)
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    for d in devices:
        d.sync()
    assert {d.active for d in devices} == {2}  # Fleet I's behaviour without rollouts


def test_staged_model_holds_new_versions(fleet) -> None:
    reg, client, devices = fleet
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    for d in devices:
        d.sync()
    assert {d.active for d in devices} == {1} and all(2 not in d.received for d in devices)


def test_bad_requests_are_refused(fleet) -> None:
    reg, client, devices = fleet
    with pytest.raises(UserInputError, match="not published"):
        client.start("smol", 9, "g")
    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    with pytest.raises(UserInputError, match="no enrolled device"):
        client.start("smol", 2, "nobody", key=reg.keys.targets_key)
    with pytest.raises(UserInputError, match="strictly increasing|percentages"):
        client.start("smol", 2, "g", stages="50,10")
    with pytest.raises(UserInputError, match="unknown gate metric"):
        client.start("smol", 2, "g", gates=["latency<1"])
    client.start("smol", 2, "g")
    with pytest.raises(UserInputError, match="already has rollout"):
        client.start("smol", 2, "g")
    # devices cannot post someone else's telemetry or bad batches
    d = devices[0]
    bad = d.http.post("/v1/telemetry", json={"stream": "x", "events": [
        {"seq": 2, "ts": 1.0, "kind": "request", "body": {}}, {"seq": 1, "ts": 1.0, "kind": "request", "body": {}}]})
    assert bad.status_code == 422
    anon = httpx.post(str(d.http.base_url) + "/v1/telemetry", json={"stream": "x", "events": []})
    assert anon.status_code == 401
    assert httpx.get(str(d.http.base_url) + "/metrics").status_code == 401
