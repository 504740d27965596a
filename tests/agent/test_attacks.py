"""Attacks on a device, each named for the attack (python-tuf style), against a real control plane on
loopback with a hostile mirror in between (``HostileTransport``). Every attack must leave the active
model byte-for-byte untouched and the reason must reach the control plane (or, when the control
plane refuses the device itself, be recorded there as an ``auth_refused`` event)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from agent_kit import (
    EndlessStream,
    HostileTransport,
    check_device,
    device_snapshot,
    load_json,
    make_agent,
    refusals,
    replace_body,
)

from edgegen.errors import AuthError
from edgegen.fleet.signing import SigningKey, canonical_json, sign


@pytest.fixture
def device(fleet, model_versions, tmp_path):  # type: ignore[no-untyped-def]
    """An enrolled device running v1, behind a (for now honest) hostile mirror."""
    fleet.publish(model_versions[1], 1)
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    device_id = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    assert check_device(agent.dir)[0] == 1
    agent.device_id = device_id
    agent.mirror = mirror
    yield agent
    agent.close()
    mirror.close()


def refused_with(fleet, agent, error: str) -> dict:  # type: ignore[no-untyped-def]
    bad = [e for e in refusals(fleet, agent.device_id) if e["kind"] == "update_refused"]
    assert bad, "no refusal reported to the control plane"
    assert bad[0]["reason"].startswith(error), bad[0]["reason"]
    return bad[0]


def attack(fleet, agent, expected_error: str) -> None:  # type: ignore[no-untyped-def]
    before = device_snapshot(agent.dir)
    assert agent.run_once() == "refused"
    assert device_snapshot(agent.dir) == before, "the active model changed"
    refused_with(fleet, agent, expected_error)
    assert check_device(agent.dir)[0] == before["active"].version
    assert not list((agent.dir / "downloads").glob("*")) if (agent.dir / "downloads").exists() else True


def test_tampered_artifact(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)

    def flip(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        body = bytearray(response.content)
        body[len(body) // 2] ^= 0xFF
        return replace_body(response, bytes(body))

    device.mirror.on(r"/v1/device/blobs/", flip)
    attack(fleet, device, "HashMismatchError")


def test_tampered_artifact_identity_transfer(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    device.config.encoding = None  # fetch the raw artifact, not the zstd transfer
    fleet.publish(model_versions[2], 2)
    device.mirror.on(r"/v1/device/blobs/", lambda q, r: replace_body(r, r.content[:-1] + b"\x00"))
    attack(fleet, device, "HashMismatchError")


def test_bad_signature(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)

    def corrupt(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        env = json.loads(response.content)
        sig = bytearray(bytes.fromhex(env["signatures"][0]["sig"]))
        sig[5] ^= 0x01
        env["signatures"][0]["sig"] = sig.hex()
        return replace_body(response, canonical_json(env))

    device.mirror.on(r"/v1/device/manifests/", corrupt)
    attack(fleet, device, "SignatureError")


def test_unknown_key_signature(fleet, device, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The attacker publishes its own build through the mirror, signed by its own key.
    evil = fleet.release(model_versions[3], 2, key=SigningKey.generate())
    fleet.admin.upload_blob(evil.artifact, evil.manifest.sha256)  # even with the blobs in place
    fleet.publish(model_versions[2], 2)
    device.mirror.on(r"/v1/device/manifests/", lambda q, r: replace_body(r, evil.envelope))
    attack(fleet, device, "SignatureError")
    assert "not signed by any trusted key" in refused_with(fleet, device, "SignatureError")["reason"]


def test_rollback_attack(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)
    assert device.run_once() == "switched"
    # An attacker who stole the control plane's online freshness key signs "run v1" (a genuine,
    # validly signed, older manifest): the offline-signed versions still only move forward.
    def downgrade(q: httpx.Request, r: httpx.Response) -> httpx.Response:
        body = r.json()
        signed = {**body["statement"]["signed"], "version": 1}
        return replace_body(r, json.dumps({**body, "version": 1,
                                           "statement": sign(signed, [fleet.keyring.freshness_key])}).encode())

    device.mirror.on(r"/v1/device/desired$", downgrade)
    attack(fleet, device, "RollbackError")
    assert check_device(device.dir)[0] == 2


def test_freeze_attack(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    # v2 is validly signed but expires after a day; the mirror keeps replaying it after that.
    fleet.publish(model_versions[2], 2, expires_days=1)
    device.clock = lambda: datetime.now(timezone.utc) + timedelta(days=2)
    attack(fleet, device, "FreezeError")


def test_endless_data(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(model_versions[2], 2)
    streams: list[EndlessStream] = []

    def endless(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        streams.append(EndlessStream(prefix=response.content))
        return httpx.Response(200, headers={"content-type": "application/octet-stream"}, stream=streams[-1])

    device.mirror.on(r"/v1/device/blobs/", endless)
    attack(fleet, device, "OversizeError")
    allowed = rel.manifest.transfers["zstd"].size
    assert streams and streams[0].sent <= allowed + 2 * 65536 + len(b""), "read far past the signed size"


def test_oversize_download(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)
    device.mirror.on(r"/v1/device/manifests/",
                     lambda q, r: httpx.Response(200, stream=EndlessStream(prefix=r.content, chunk=b" " * 4096)))
    attack(fleet, device, "OversizeError")


def test_mix_and_match(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    device.config.deltas = False  # the zstd transfers are what the mirror swaps here
    v2 = fleet.publish(model_versions[2], 2)
    v3 = fleet.publish(model_versions[3], 3)
    # (a) v3's manifest with v2's artifact bytes: the mirror answers v3's transfer with v2's.
    v2_transfer = v2.zstd_path.read_bytes()
    device.mirror.on(lambda q: v3.manifest.transfers["zstd"].sha256 in q.url.path,
                     lambda q, r: replace_body(r, v2_transfer))
    attack(fleet, device, "HashMismatchError")
    # (b) v2's (valid, signed) manifest served where v3's was announced.
    device.mirror.clear()
    device.mirror.on(r"/v1/device/manifests/stories/3", lambda q, r: replace_body(r, v2.envelope))
    before = device_snapshot(device.dir)
    assert device.run_once() == "refused"
    assert device_snapshot(device.dir) == before
    assert refusals(fleet, device.device_id)[0]["reason"].startswith("BindingError")


def test_unenrolled_device(fleet, device, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[2], 2)
    # A device whose credential the control plane never issued (forged id and secret).
    cred = load_json(device.credential_path)
    device.credential_path.write_text(json.dumps({**cred, "credential": "dev_0000000000000000.forged"}))
    device.close()
    device._client = None
    before = device_snapshot(device.dir)
    assert device.run_once() == "auth_refused"
    assert device_snapshot(device.dir) == before
    assert "unknown device credential" in load_json(device.dir / "status.json")["reason"]
    refused = [e for e in fleet.events() if e["kind"] == "auth_refused"]
    assert refused and refused[0]["reason"] == "unknown device credential"
    # And an enrolment token the control plane never issued gets no credential at all.
    stranger = make_agent(fleet.url, tmp_path / "stranger")
    with pytest.raises(AuthError):
        stranger.enroll("egt_000000000000.forgedsecret")
    assert not stranger.enrolled()


def test_revoked_device(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    fleet.admin.revoke(device.device_id, "reported stolen")
    fleet.publish(model_versions[2], 2)
    before = device_snapshot(device.dir)
    assert device.run_once() == "auth_refused"
    assert device_snapshot(device.dir) == before
    assert check_device(device.dir)[0] == 1
    assert "revoked" in load_json(device.dir / "status.json")["reason"]
    refused = [e for e in fleet.events(device.device_id) if e["kind"] == "auth_refused"]
    assert refused and "revoked: reported stolen" in refused[0]["reason"]


def test_spent_enrolment_token_is_refused(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = fleet.token()
    make_agent(fleet.url, tmp_path / "a").enroll(token)
    with pytest.raises(AuthError, match="already used"):
        make_agent(fleet.url, tmp_path / "b").enroll(token)


def test_enrolment_pins_the_root_key(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mirror that substitutes its own root at enrolment is refused: the token pins the root key."""
    evil = SigningKey.generate()
    from edgegen.fleet.signing import RootMeta

    fake_root = sign(RootMeta.make_signed(1, datetime.now(timezone.utc) + timedelta(days=9), [evil.public],
                                          [evil.public]), [evil])
    mirror = HostileTransport()
    mirror.on(r"/v1/enroll$",
              lambda q, r: replace_body(r, json.dumps({**r.json(), "root_chain": [fake_root]}).encode()))
    agent = make_agent(fleet.url, tmp_path / "d", transport=mirror)
    with pytest.raises(Exception, match="pinned key"):
        agent.enroll(fleet.token())
    assert not agent.enrolled()


def test_forged_root_rotation(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    """A mirror offering root v2 signed only by its own key cannot take over the device's trust."""
    from edgegen.fleet.signing import RootMeta

    evil = SigningKey.generate()
    forged = canonical_json(sign(RootMeta.make_signed(2, datetime.now(timezone.utc) + timedelta(days=9),
                                                      [evil.public], [evil.public]), [evil]))
    device.mirror.on(r"/v1/root/2.json$", lambda q, r: replace_body(httpx.Response(200), forged))
    fleet.publish(model_versions[2], 2)
    attack(fleet, device, "SignatureError")
    assert json.loads((device.dir / "trust" / "root.json").read_text())["signed"]["version"] == 1
