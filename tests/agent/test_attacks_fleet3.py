"""Fleet III attacks, named for them: a replayed desired-state answer (freeze and replay), deltas that
reconstruct to the wrong bytes or to an older version, and a control plane certificate that is not
from the fleet CA. Real control plane on loopback, hostile mirror in between (``agent_kit``)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from agent_kit import BodyStream, HostileTransport, check_device, device_snapshot, make_agent, refusals, replace_body

from edgegen.delta import ENCODING, make_delta


@pytest.fixture
def device(fleet, model_versions, tmp_path):  # type: ignore[no-untyped-def]
    """An enrolled device running v1, behind a (for now honest) hostile mirror."""
    fleet.publish(model_versions[1], 1)
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    agent.device_id_ = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    agent.mirror = mirror
    yield agent
    agent.close()
    mirror.close()


def last_refusal(fleet, agent) -> str:  # type: ignore[no-untyped-def]
    bad = [e for e in refusals(fleet, agent.device_id_) if e["kind"] == "update_refused"]
    assert bad, "no refusal reported to the control plane"
    return str(bad[0]["reason"])


# ---- signed freshness ----------------------------------------------------------------------------


def test_freeze_attack_replayed_desired_state(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    # The mirror recorded the control plane's signed "stay on v1" answer ...
    stay = httpx.get(f"{fleet.url}/v1/device/desired", headers={"Authorization": device.client().http.headers[
        "Authorization"]}).content
    assert json.loads(stay)["statement"]["signed"]["version"] == 1
    # ... and keeps replaying it after v2 ships, long after the statement expired.
    fleet.publish(model_versions[2], 2)
    device.mirror.on(r"/v1/device/desired$", lambda q, r: replace_body(r, stay))
    device.clock = lambda: datetime.now(timezone.utc) + timedelta(hours=1)
    before = device_snapshot(device.dir)
    assert device.run_once() == "refused"
    assert device_snapshot(device.dir) == before
    assert last_refusal(fleet, device).startswith("FreezeError")
    assert json.loads((device.dir / "status.json").read_text())["outcome"] == "refused"
    # The honest answer (the mirror gone) moves the device on.
    device.mirror.clear()
    device.clock = lambda: datetime.now(timezone.utc)
    assert device.run_once() == "switched"
    assert check_device(device.dir)[0] == 2


def test_replayed_desired_state_older_than_seen(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    old = httpx.get(f"{fleet.url}/v1/device/desired", headers={"Authorization": device.client().http.headers[
        "Authorization"]}).content
    fleet.publish(model_versions[2], 2)
    device.clock = lambda: datetime.now(timezone.utc) + timedelta(seconds=2)
    import time

    time.sleep(1.1)  # the next statement is issued at a later second than ``old``
    assert device.run_once() == "switched"
    device.mirror.on(r"/v1/device/desired$", lambda q, r: replace_body(r, old))
    assert device.run_once() == "refused"
    assert last_refusal(fleet, device).startswith("RollbackError")
    assert check_device(device.dir)[0] == 2


def test_unsigned_desired_version_is_ignored(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    """The mirror rewrites the unsigned fields to announce an older version: the device follows only
    the signed statement (which says v2), so it neither downgrades nor reinstalls."""
    fleet.publish(model_versions[2], 2)
    assert device.run_once() == "switched"
    device.mirror.on(r"/v1/device/desired$",
                     lambda q, r: replace_body(r, json.dumps({**r.json(), "version": 1}).encode()))
    assert device.run_once() == "current"
    assert check_device(device.dir)[0] == 2


def test_desired_state_for_another_device(fleet, device, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = make_agent(fleet.url, tmp_path / "other")
    other.enroll(fleet.token())
    theirs = other.client().http.get("/v1/device/desired").content
    other.close()
    device.mirror.on(r"/v1/device/desired$", lambda q, r: replace_body(r, theirs))
    assert device.run_once() == "refused"
    assert last_refusal(fleet, device).startswith("BindingError")


# ---- deltas --------------------------------------------------------------------------------------


def test_delta_update_ships_fewer_bytes(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(model_versions[2], 2)
    assert device.run_once() == "switched"
    assert check_device(device.dir)[0] == 2
    switched = [e for e in fleet.events(device.device_id_) if e["kind"] == "switched"][0]
    assert switched["detail"]["encoding"] == ENCODING
    assert switched["detail"]["transfer_bytes"] < rel.manifest.transfers["zstd"].size / 10
    delta_gets = [p for m, p, _ in device.mirror.log if p.startswith("/v1/device/deltas/")]
    assert delta_gets, "the agent never asked for a delta"


def streamed(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-length": str(len(body))}, stream=BodyStream(body))


def _evil_delta(device, fleet, base: Path, target: Path, tmp_path: Path) -> bytes:  # type: ignore[no-untyped-def]
    """Make the mirror offer (and serve) a delta from ``base`` to ``target`` instead of the real one."""
    patch = tmp_path / "evil.zst"
    make_delta(base, target, patch)
    body = patch.read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    act = device.slots.active()

    def offer(q: httpx.Request, r: httpx.Response) -> httpx.Response:
        return streamed(json.dumps({"encoding": ENCODING, "base_sha256": act.sha256, "sha256": sha,
                                    "size": len(body)}).encode())

    device.mirror.on(r"/v1/device/deltas/", offer)
    device.mirror.on(lambda q: sha in q.url.path, lambda q, r: streamed(body))
    return body


def test_delta_reconstructing_to_wrong_bytes(fleet, device, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)
    _evil_delta(device, fleet, model_versions[1], model_versions[5], tmp_path)  # v1 -> bytes of v5, not v2
    before = device_snapshot(device.dir)
    assert device.run_once() == "refused"
    assert device_snapshot(device.dir) == before, "the active model changed"
    assert last_refusal(fleet, device).startswith("HashMismatchError")
    # The device does not retry that delta: the next poll takes the full (signed) transfer.
    assert device.run_once() == "switched"
    assert check_device(device.dir)[0] == 2
    switched = [e for e in fleet.events(device.device_id_) if e["kind"] == "switched"][0]
    assert switched["detail"]["encoding"] == "zstd"


def test_downgrade_through_a_delta(fleet, device, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)
    assert device.run_once() == "switched"
    fleet.publish(model_versions[3], 3)
    # The mirror offers a delta that rebuilds v1 (older, validly signed once) where v3 was announced.
    _evil_delta(device, fleet, model_versions[2], model_versions[1], tmp_path)
    before = device_snapshot(device.dir)
    assert device.run_once() == "refused"
    assert device_snapshot(device.dir) == before
    assert last_refusal(fleet, device).startswith("HashMismatchError")
    assert check_device(device.dir)[0] == 2


def test_oversize_delta_offer_falls_back_to_full(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(model_versions[2], 2)
    big = rel.manifest.transfers["zstd"].size + 1
    device.mirror.on(r"/v1/device/deltas/", lambda q, r: streamed(json.dumps({
        "encoding": ENCODING, "base_sha256": device.slots.active().sha256, "sha256": "0" * 64,
        "size": big}).encode()))
    assert device.run_once() == "switched"
    switched = [e for e in fleet.events(device.device_id_) if e["kind"] == "switched"][0]
    assert switched["detail"]["encoding"] == "zstd"
