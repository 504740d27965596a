"""Publishing is not live: the publish-then-rollout sequence an operator trips on.

Nothing moves on publish; a rollout of a version not newer than what members run is refused with
the reason (before any rollback version number is used up); the rollout says which version it
reserved for rollback and why; no device shows an error once it converged; a completed rollout
reports its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

from edgegen.errors import UserInputError
from edgegen.fleet.app import create_app
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig


@pytest.fixture()
def fleet(tmp_path: Path):
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir))
    app.state.fleet.config.rollout_interval_s = 0
    server = ThreadServer(app)
    client = RolloutClient(server.url, ADMIN)
    yield reg, client, server
    client.close()
    server.stop()
    app.state.fleet.engine.dispose()


def versions(client: RolloutClient) -> list[int]:
    return [v["version"] for m in client.models() for v in m["versions"]]


def test_publish_then_rollout(fleet) -> None:
    reg, client, server = fleet
    reg.publish_bytes(client, "smol", 1, b"model one" * 100)
    devices = [SimDevice(server.url, client.enroll_token(model="smol", group="g"), f"d{i}") for i in range(4)]
    for d in devices:
        assert d.sync() == "current" and d.active is None  # published is not shipped
    assert {d.status(client)["status"] for d in devices} == {"waiting"}
    client.release("smol", 1)  # `fleet publish --to all --now`
    for d in devices:
        d.sync()
    assert {d.active for d in devices} == {1}

    reg.publish_bytes(client, "smol", 2, b"model two" * 100)
    for d in devices:
        assert d.sync() == "current"  # nothing moves on publish
    assert {d.active for d in devices} == {1} and all(2 not in d.received for d in devices)

    r = client.start("smol", 2, "g", stages="50,100", key=reg.keys.targets_key, on_no_traffic="advance",
                     no_traffic_s=0)
    assert r["rollback_version"] == 3 and "v3 reserved for rollback" in r["rollback_note"]
    assert "v1's bytes" in r["rollback_note"] and "refuse older version numbers" in r["rollback_note"]
    for _ in range(4):
        for d in devices:
            d.sync()
            d.requests(5, 0.1)
        client.tick()
    done = client.show(r["id"])
    assert done["state"] == "completed", done["last_decision"]
    assert done["result"].startswith("completed: v2 released to g") and "devices on v2" in done["result"]
    for d in devices:
        d.sync()
    assert {d.active for d in devices} == {2}

    # the not-newer rollout: refused with the reason, and no rollback version number burnt for it
    before = versions(client)
    with pytest.raises(UserInputError, match="not newer than what 4 of 4 member"):
        client.start("smol", 2, "g", key=reg.keys.targets_key)
    with pytest.raises(UserInputError, match="not newer"):
        client.start("smol", 1, "g", key=reg.keys.targets_key)
    assert versions(client) == before
    # a device that refused something on the way, then converged, is not shown as an error
    devices[0].report("update_refused", 1, ok=False, reason="RollbackError: v1 is older than v2")
    for d in devices:
        assert d.sync() == "current"
    states = {d.status(client)["status"] for d in devices}
    assert states == {"current"}, [d.status(client) for d in devices]
    # a completed rollout keeps its result even when devices later run something else
    reg.publish_bytes(client, "smol", 4, b"model four" * 100)
    client.release("smol", 4)
    for d in devices:
        d.sync()
    assert client.show(r["id"])["result"] == done["result"]


def test_release_refuses_older_and_while_a_rollout_runs(fleet) -> None:
    reg, client, server = fleet
    reg.publish_bytes(client, "smol", 1, b"one" * 100)
    reg.publish_bytes(client, "smol", 2, b"two" * 100)
    client.release("smol", 2)
    with pytest.raises(UserInputError, match="not newer than the released v2"):
        client.release("smol", 1)
    d = SimDevice(server.url, client.enroll_token(model="smol", group="g"), "d0")
    d.sync()
    reg.publish_bytes(client, "smol", 3, b"three" * 100)
    client.start("smol", 3, "g", key=reg.keys.targets_key)
    with pytest.raises(UserInputError, match="abort it before releasing"):
        client.release("smol", 3)
