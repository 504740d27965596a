"""Transport security: the control plane over TLS (fleet CA) and mutual TLS (device certificates
issued at enrolment). Real uvicorn with TLS on 127.0.0.1:0; the attack tests are named for them."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from fleet_kit import ADMIN_TOKEN, LiveServer

from edgegen.agent.agent import Agent, AgentConfig
from edgegen.agent.health import HealthPolicy
from edgegen.errors import AuthError, FleetError, TlsSetupError
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


# ---- mutual TLS: the credential bound to the device's certificate, and the CRL --------------------


def credential(agent: Agent) -> str:
    return agent.credential()["credential"]


def device_tls(ca: FleetCA, agent: Agent | None = None, *, cert: Path | None = None,
               key: Path | None = None) -> ssl.SSLContext:
    """A TLS context trusting the fleet CA that presents ``agent``'s own certificate (or ``cert``)."""
    ctx = ssl.create_default_context(cafile=str(ca.ca_path))
    if agent is not None:
        chain = agent.tls.client_cert()
        assert chain is not None
        ctx.load_cert_chain(chain[0], chain[1], password=chain[2])
    else:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture
def mtls_pair(model_versions, tmp_path) -> Iterator[tuple[TlsFleet, Agent, Agent]]:  # type: ignore[no-untyped-def]
    f = TlsFleet(tmp_path / "fleet", mutual=True)
    with f.server:
        f.publish(model_versions[1], 1)
        devices = []
        for name in ("a", "b"):
            agent = make_device(f.url, tmp_path / name)
            bundle = f.bundle()
            agent.enroll(bundle["token"], bundle)
            devices.append(agent)
        yield f, devices[0], devices[1]
        for agent in devices:
            agent.close()
    f.admin.close()
    f.app.state.fleet.engine.dispose()


def test_mtls_credential_of_one_device_with_the_certificate_of_another(mtls_pair) -> None:  # type: ignore[no-untyped-def]
    """Device A's stolen credential, presented over a connection made with device B's certificate
    (valid, from the fleet CA): refused, and recorded against A."""
    f, a, b = mtls_pair
    url = f"{f.url}/v1/device/desired"
    own = httpx.get(url, headers={"authorization": f"Bearer {credential(a)}"}, verify=device_tls(f.ca, a))
    assert own.status_code == 200, own.text  # the control: A's credential on A's certificate
    stolen = httpx.get(url, headers={"authorization": f"Bearer {credential(a)}"}, verify=device_tls(f.ca, b))
    assert stolen.status_code == 403
    assert f"issued to {b.credential()['device_id']!r}, not to device {a.credential()['device_id']}" in \
        stolen.json()["detail"]
    refused = [e for e in f.admin._call("GET", "/v1/admin/events", params={"device_id": a.credential()["device_id"]})
               if e["kind"] == "auth_refused"]
    assert refused and "not to device" in refused[0]["reason"]
    assert a.run_once() == "switched" and b.run_once() == "switched"  # each with its own: fine


def test_mtls_revoked_device_certificate(mtls_pair) -> None:  # type: ignore[no-untyped-def]
    """After device A is revoked, its certificate is on the fleet CA's CRL: refused on every route
    (even public ones and enrolment with a fresh token), whatever credential rides with it."""
    f, a, b = mtls_pair
    a_id = a.credential()["device_id"]
    a_tls = device_tls(f.ca, a)
    assert httpx.get(f"{f.url}/healthz", verify=a_tls).status_code == 200  # the control
    f.admin._call("POST", f"/v1/admin/devices/{a_id}/revoke", json={"reason": "stolen"})
    for path in ("/healthz", "/v1/device/desired"):
        r = httpx.get(f"{f.url}{path}", headers={"authorization": f"Bearer {credential(b)}"}, verify=a_tls)
        assert r.status_code == 403 and "revoked" in r.json()["detail"], (path, r.text)
    token = f.bundle()["token"]
    r = httpx.post(f"{f.url}/v1/enroll", json={"token": token, "name": "again"}, verify=a_tls)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    assert b.run_once() == "switched"  # B is untouched
    crl = x509.load_pem_x509_crl(httpx.get(f"{f.url}/v1/crl.pem", verify=device_tls(f.ca, b)).content)
    assert crl.is_signature_valid(f.ca.cert.public_key())
    a_cert = x509.load_pem_x509_certificate((a.dir / "trust" / "device.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(a_cert.serial_number) is not None
    b_cert = x509.load_pem_x509_certificate((b.dir / "trust" / "device.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(b_cert.serial_number) is None


def test_mtls_leaked_enrolment_bundle_revoked(model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An enrolment bundle leaks: the operator revokes its certificate; enrolling with it is refused."""
    f = TlsFleet(tmp_path / "fleet", mutual=True)
    with f.server:
        bundle = f.bundle()
        serial = x509.load_pem_x509_certificate(bundle["enrol_cert_pem"].encode()).serial_number
        f.admin._call("POST", f"/v1/admin/certificates/{serial:x}/revoke")
        agent = make_device(f.url, tmp_path / "dev")
        with pytest.raises(AuthError, match="revoked"):
            agent.enroll(bundle["token"], bundle)
        assert not agent.enrolled()
        fresh = f.bundle()  # another bundle still enrols
        make_device(f.url, tmp_path / "dev2").enroll(fresh["token"], fresh)
    f.admin.close()
    f.app.state.fleet.engine.dispose()


def test_mtls_without_the_peer_certificate_protocol_fails_closed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mutual-TLS control plane run by a server that does not hand the client certificate to the
    app (plain uvicorn): every request is refused, rather than served without the binding."""
    f = TlsFleet(tmp_path / "fleet", mutual=True)
    plain = {k: v for k, v in f.ca.server_ssl(True).items() if k != "http"}
    server = LiveServer(f.app, ssl=plain)
    with server:
        admin = RolloutClient(server.url, ADMIN_TOKEN, verify=admin_context(tmp_path / "fleet" / "keys"))
        with pytest.raises(FleetError, match="no client certificate reached"):
            admin._call("GET", "/v1/admin/devices")
        admin.close()
    f.admin.close()
    f.app.state.fleet.engine.dispose()
