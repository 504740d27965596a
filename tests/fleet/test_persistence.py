"""Control-plane persistence on SQLite and on a real PostgreSQL server (``db_url`` runs each test on
both; PostgreSQL is skipped with a message when no server can be found or started): migrations,
registry rules, enrolment, revocation, refusals and reports, through the real HTTP API."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fleet_kit import ADMIN_TOKEN
from sqlalchemy import inspect, select

from edgegen.errors import AuthError
from edgegen.fleet import enrol
from edgegen.fleet.app import create_app
from edgegen.fleet.db import Base, Device, DeviceEvent, make_engine, migrate, session_factory
from edgegen.fleet.keys import Keyring
from edgegen.fleet.publish import build_release
from edgegen.fleet.state import ControlPlaneConfig

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def plane(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    ring = Keyring.init(tmp_path / "keys")
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "data", db_url=db_url, admin_token=ADMIN_TOKEN,
                                        keys_dir=tmp_path / "keys"))
    with TestClient(app) as client:
        client.ring = ring
        client.plane = app.state.fleet
        yield client
    app.state.fleet.engine.dispose()


def upload(client, release) -> None:  # type: ignore[no-untyped-def]
    for path, sha in [(release.artifact, release.manifest.sha256),
                      (release.zstd_path, release.manifest.transfers["zstd"].sha256)]:
        r = client.put(f"/v1/admin/blobs/{sha}", content=path.read_bytes(), headers=ADMIN)
        assert r.status_code == 201, r.text


def release(client, tmp_path, version: int, payload: bytes = b"", **kw):  # type: ignore[no-untyped-def]
    art = tmp_path / f"artifact-{version}-{len(payload)}.bin"
    art.write_bytes(b"model bytes %d " % version + payload)
    return build_release(art, name=kw.pop("name", "m"), version=version, key=kw.pop("key", client.ring.targets_key),
                         work_dir=tmp_path / f"w{version}", architecture="llama", quantization="Q4_K", **kw)


def publish(client, rel):  # type: ignore[no-untyped-def]
    upload(client, rel)
    return client.post("/v1/admin/versions", content=rel.envelope, headers=ADMIN)


def enroll(client, model: str = "m") -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    token = client.post("/v1/admin/enroll-tokens", json={"model": model}, headers=ADMIN).json()["token"]
    r = client.post("/v1/enroll", json={"token": token, "name": "d"})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["device_id"], {"Authorization": f"Bearer {body['credential']}"}


def test_migrations_create_the_schema_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # a restart runs them again: nothing to do
    tables = set(inspect(engine).get_table_names())
    fleet_i = {"devices", "device_labels", "enroll_tokens", "models", "model_versions", "blobs", "root_versions",
               "device_events"}
    assert fleet_i <= tables
    # the ORM's view of Fleet I's tables matches what the migrations created
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def named(name, type_, parent):  # type: ignore[no-untyped-def]  # reflected side
        return type_ != "table" or name in fleet_i

    def owned(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]  # metadata side
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in fleet_i

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_name": named, "include_object": owned,
                                                     "compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], diff
    engine.dispose()


def test_publish_rules(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert publish(plane, release(plane, tmp_path, 1)).status_code == 201
    # versions only go up, and a version is immutable
    r = publish(plane, release(plane, tmp_path, 1, b"other bytes"))
    assert r.status_code == 400 and "not newer" in r.json()["detail"]
    # unsigned by the trusted targets key
    from edgegen.fleet.signing import SigningKey

    r = publish(plane, release(plane, tmp_path, 2, key=SigningKey.generate()))
    assert r.status_code == 400 and "not signed by any trusted key" in r.json()["detail"]
    # already expired
    old = datetime.now(timezone.utc) - timedelta(days=3)
    r = publish(plane, release(plane, tmp_path, 2, now=old, expires_days=1))
    assert r.status_code == 400 and "expired" in r.json()["detail"]
    # blobs must be uploaded first
    rel = release(plane, tmp_path, 2, b"never uploaded")
    r = plane.post("/v1/admin/versions", content=rel.envelope, headers=ADMIN)
    assert r.status_code == 400 and "has not been uploaded" in r.json()["detail"]
    # an upload whose bytes do not hash to its address is refused and leaves nothing behind
    r = plane.put(f"/v1/admin/blobs/{'0' * 64}", content=b"x", headers=ADMIN)
    assert r.status_code == 400
    assert not (plane.plane.blobs_dir / "sha256" / ("0" * 64)).exists()
    # admin only
    assert plane.post("/v1/admin/versions", content=rel.envelope).status_code == 401
    assert publish(plane, release(plane, tmp_path, 5)).status_code == 201  # gaps are fine
    models = plane.get("/v1/admin/models", headers=ADMIN).json()
    assert [v["version"] for v in models[0]["versions"]] == [1, 5]
    assert models[0]["versions"][0]["quantization"] == "Q4_K"


def test_device_api_serves_desired_manifest_and_ranges(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rel = release(plane, tmp_path, 1, b"x" * 5000)
    assert publish(plane, rel).status_code == 201
    device_id, auth = enroll(plane)
    desired = plane.get("/v1/device/desired", headers=auth).json()
    assert (desired["model"], desired["version"]) == ("m", None)  # published is not shipped
    assert plane.post("/v1/admin/rollouts/release/m", json={"version": 1}, headers=ADMIN).status_code == 200
    desired = plane.get("/v1/device/desired", headers=auth).json()
    assert (desired["model"], desired["version"], desired["root_version"]) == ("m", 1, 1)
    assert plane.get(desired["manifest_url"], headers=auth).content == rel.envelope
    sha = rel.manifest.sha256
    r = plane.get(f"/v1/device/blobs/{sha}", headers={**auth, "Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == rel.artifact.read_bytes()[100:]
    assert plane.get(f"/v1/device/blobs/{sha}").status_code == 401
    r = plane.post("/v1/device/report", headers=auth, json={"kind": "switched", "version": 1, "active_version": 1,
                                                            "active_sha256": sha})
    assert r.status_code == 201
    dev = plane.get("/v1/admin/devices", headers=ADMIN).json()[0]
    assert (dev["id"], dev["active_version"], dev["active_sha256"]) == (device_id, 1, sha)
    bad = plane.post("/v1/device/report", headers=auth, json={"kind": "nonsense"})
    assert bad.status_code == 422


def test_enrolment_tokens_are_single_use_and_expire(plane) -> None:  # type: ignore[no-untyped-def]
    token = plane.post("/v1/admin/enroll-tokens", json={"model": "m", "labels": {"site": "lab"}, "group": "g1"},
                       headers=ADMIN).json()["token"]
    assert token.split(".")[2] == plane.ring.root_key.keyid  # pins the root key
    first = plane.post("/v1/enroll", json={"token": token, "labels": {"rack": "3"}})
    assert first.status_code == 201
    second = plane.post("/v1/enroll", json={"token": token})
    assert second.status_code == 401 and "already used" in second.json()["detail"]
    dev = plane.get("/v1/admin/devices", headers=ADMIN).json()[0]
    assert dev["labels"] == {"site": "lab", "rack": "3"} and dev["group"] == "g1"
    short = plane.post("/v1/admin/enroll-tokens", json={"ttl_s": 0.001}, headers=ADMIN).json()["token"]
    import time

    time.sleep(0.01)
    assert "expired" in plane.post("/v1/enroll", json={"token": short}).json()["detail"]
    assert plane.post("/v1/enroll", json={"token": "egt_x.y"}).status_code == 401


def test_token_race_gives_one_device(plane) -> None:  # type: ignore[no-untyped-def]
    token = plane.post("/v1/admin/enroll-tokens", json={}, headers=ADMIN).json()["token"]
    sessions = plane.plane.sessions
    results: list[str] = []

    def go() -> None:
        with sessions() as s:
            try:
                enrol.enroll(s, token)
                s.commit()
                results.append("ok")
            except AuthError:
                s.rollback()
                results.append("refused")
            except Exception as exc:  # a serialization failure is also a refusal
                s.rollback()
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1, results
    with sessions() as s:
        assert len(s.scalars(select(Device)).all()) == 1


def test_revoked_and_unknown_credentials_are_refused_and_recorded(plane) -> None:  # type: ignore[no-untyped-def]
    device_id, auth = enroll(plane)
    assert plane.get("/v1/device/me", headers=auth).status_code == 200
    r = plane.post(f"/v1/admin/devices/{device_id}/revoke", json={"reason": "lost"}, headers=ADMIN)
    assert r.json()["revoked"] is True
    r = plane.get("/v1/device/desired", headers=auth)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    wrong = {"Authorization": f"Bearer {device_id}.not-the-secret"}
    assert plane.get("/v1/device/desired", headers=wrong).status_code == 401
    assert plane.get("/v1/device/desired", headers={"Authorization": "Bearer dev_nobody.x"}).status_code == 401
    assert plane.get("/v1/device/desired").status_code == 401
    with plane.plane.sessions() as s:
        events = s.scalars(select(DeviceEvent).where(DeviceEvent.kind == "auth_refused")
                           .order_by(DeviceEvent.id)).all()
    reasons = [(e.device_id, e.reason) for e in events]
    assert (device_id, f"device {device_id} is revoked: lost") in reasons
    assert (device_id, "wrong device credential") in reasons
    assert (None, "unknown device credential") in reasons and (None, "no device credential") in reasons
    assert plane.post("/v1/admin/devices/dev_nobody/revoke", json={}, headers=ADMIN).status_code == 404


def test_root_rotation_is_published_as_a_chain(plane) -> None:  # type: ignore[no-untyped-def]
    ring = plane.ring
    ring.rotate("root")
    ring.rotate("targets")
    # skipping v2 is refused; v2 then v3 are accepted; re-posting is idempotent
    assert plane.post("/v1/admin/root", content=ring.root_bytes(3), headers=ADMIN).status_code == 400
    assert plane.post("/v1/admin/root", content=ring.root_bytes(2), headers=ADMIN).json() == {"version": 2}
    assert plane.post("/v1/admin/root", content=ring.root_bytes(3), headers=ADMIN).json() == {"version": 3}
    assert plane.post("/v1/admin/root", content=ring.root_bytes(3), headers=ADMIN).status_code == 201
    # a root signed only by a key the old root never listed cannot be appended
    from edgegen.fleet.signing import RootMeta, SigningKey, canonical_json, sign

    evil = SigningKey.generate()
    forged = sign(RootMeta.make_signed(4, datetime.now(timezone.utc) + timedelta(days=1), [evil.public],
                                       [evil.public]), [evil])
    assert plane.post("/v1/admin/root", content=canonical_json(forged), headers=ADMIN).status_code == 400
    for v in (1, 2, 3):
        assert json.loads(plane.get(f"/v1/root/{v}.json").content)["signed"]["version"] == v
    assert plane.get("/v1/root/4.json").status_code == 404
    # the new targets key publishes, the retired one no longer can
    rel = release(plane, Path(plane.plane.config.data_dir), 1, key=ring.targets_key)
    assert publish(plane, rel).status_code == 201


def test_state_survives_a_restart(db_url: str, tmp_path: Path) -> None:
    Keyring.init(tmp_path / "keys")
    config = ControlPlaneConfig(data_dir=tmp_path / "data", db_url=db_url, admin_token=ADMIN_TOKEN,
                                keys_dir=tmp_path / "keys")
    app = create_app(config)
    with TestClient(app) as c:
        token = c.post("/v1/admin/enroll-tokens", json={"model": "m"}, headers=ADMIN).json()["token"]
        cred = c.post("/v1/enroll", json={"token": token}).json()["credential"]
    app.state.fleet.engine.dispose()
    app2 = create_app(config)
    with TestClient(app2) as c:
        assert c.get("/v1/device/me", headers={"Authorization": f"Bearer {cred}"}).json()["model"] == "m"
        assert c.get("/v1/root/1.json").status_code == 200
    engine = app2.state.fleet.engine
    with session_factory(engine)() as s:
        assert len(s.scalars(select(Device)).all()) == 1
    engine.dispose()
