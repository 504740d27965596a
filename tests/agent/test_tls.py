"""Transport security: the control plane over TLS (fleet CA) and mutual TLS (device certificates
issued at enrolment). Real uvicorn with TLS on 127.0.0.1:0; the attack tests are named for them."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fleet_kit import ADMIN_TOKEN, LiveServer

from edgegen.agent.agent import Agent, AgentConfig
from edgegen.agent.health import HealthPolicy
from edgegen.errors import FleetError, TlsSetupError
from edgegen.fleet.app import create_app
from edgegen.fleet.keys import Keyring
from edgegen.fleet.publish import build_release
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig
from edgegen.fleet.tls import FleetCA, admin_context


class TlsFleet:
    def __init__(self, root: Path, mutual: bool) -> None:
        self.root = root
        self.keyring = Keyring.init(root / "keys")
        self.ca = FleetCA.init(root / "keys")
        self.app = create_app(ControlPlaneConfig(data_dir=root / "plane", admin_token=ADMIN_TOKEN,
                                                 keys_dir=root / "keys", mutual_tls=mutual, rollout_interval_s=0))
        self.server = LiveServer(self.app, ssl=self.ca.server_ssl(mutual))
        self.url = self.server.url
        self.admin = RolloutClient(self.url, ADMIN_TOKEN, verify=admin_context(root / "keys"))

    def publish(self, artifact: Path, version: int) -> None:
        rel = build_release(artifact, name="stories", version=version, key=self.keyring.targets_key,
                            work_dir=self.root / "work" / str(version))
        self.admin.publish(rel)
        self.admin.release("stories", version)

    def bundle(self) -> dict:
        r = self.admin._call("POST", "/v1/admin/enroll-tokens", json={"model": "stories"})
        return r["bundle"]


@pytest.fixture(params=[False, True], ids=["tls", "mtls"])
def tls_fleet(request, tmp_path) -> Iterator[TlsFleet]:  # type: ignore[no-untyped-def]
    f = TlsFleet(tmp_path / "fleet", mutual=request.param)
    with f.server:
        yield f
    f.admin.close()
    f.app.state.fleet.engine.dispose()


def make_device(url: str, data_dir: Path) -> Agent:
    return Agent(AgentConfig(data_dir=data_dir, server=url, poll_interval_s=0.1,
                             health=HealthPolicy(max_latency_s=120.0)))


def test_enrol_and_update_over_tls(tls_fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tls_fleet.publish(model_versions[1], 1)
    agent = make_device(tls_fleet.url, tmp_path / "dev")
    bundle = tls_fleet.bundle()
    agent.enroll(bundle["token"], bundle)
    assert (agent.dir / "trust" / "fleet-ca.pem").read_bytes() == tls_fleet.ca.ca_pem
    assert (agent.dir / "trust" / "device.pem").exists(), "no device certificate issued at enrolment"
    assert not (agent.dir / "trust" / "enrol.key").exists(), "the enrolment key outlived enrolment"
    assert agent.run_once() == "switched"
    tls_fleet.publish(model_versions[2], 2)
    assert agent.run_once() == "switched"
    assert agent.slots.active().version == 2
    agent.close()


def test_tls_certificate_not_from_fleet_ca(tls_fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An impostor control plane with a certificate from another CA (valid, for the right address):
    the device, pinning its fleet CA, refuses the connection at enrolment and at every poll."""
    tls_fleet.publish(model_versions[1], 1)
    agent = make_device(tls_fleet.url, tmp_path / "dev")
    bundle = tls_fleet.bundle()
    agent.enroll(bundle["token"], bundle)
    assert agent.run_once() == "switched"
    impostor = TlsFleet(tmp_path / "impostor", mutual=False)
    with impostor.server:
        agent.config.server = impostor.url
        agent._client = None
        before = (agent.dir / "active.json").read_bytes()
        assert agent.run_once() == "error"
        status = json.loads((agent.dir / "status.json").read_text())
        assert "CERTIFICATE_VERIFY_FAILED" in status["reason"], status
        assert (agent.dir / "active.json").read_bytes() == before
        newcomer = make_device(impostor.url, tmp_path / "new")
        with pytest.raises(FleetError, match="CERTIFICATE_VERIFY_FAILED"):
            newcomer.enroll(bundle["token"], bundle)  # the bundle pins the real fleet's CA
    impostor.admin.close()
    agent.close()


def test_https_without_pinned_ca_is_refused(tls_fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent = make_device(tls_fleet.url, tmp_path / "dev")
    with pytest.raises(TlsSetupError):
        agent.enroll(tls_fleet.bundle()["token"])  # no bundle: no CA to trust, and no fallback


def test_mtls_refuses_a_client_without_a_fleet_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = TlsFleet(tmp_path / "fleet", mutual=True)
    other = FleetCA.init(tmp_path / "other")
    with f.server:
        assert f.admin._call("GET", "/v1/admin/devices") == []  # the admin certificate opens it
        anonymous = ssl.create_default_context(cafile=str(f.ca.ca_path))
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{f.url}/healthz", verify=anonymous)
        foreign = ssl.create_default_context(cafile=str(f.ca.ca_path))
        foreign.load_cert_chain(str(other.dir / "admin.pem"), str(other.dir / "admin.key"))
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{f.url}/healthz", verify=foreign)
    f.admin.close()
