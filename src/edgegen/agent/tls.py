"""The device's side of TLS: the pinned fleet CA and (mTLS) its own key and certificate.

    <data>/trust/fleet-ca.pem      the fleet CA from the enrolment bundle: the only issuer trusted
                                   for the control plane's certificate (no system store)
    <data>/trust/device.key        the device's private key (0600), made here, never sent; with an
                                   at-rest key, PKCS#8-encrypted under a passphrase derived from it
                                   (``sealed.key_passphrase``): a stolen data dir cannot present it
    <data>/trust/device.pem        its certificate, issued by the control plane at enrolment
    <data>/trust/enrol.pem, .key   the bundle's short-lived enrolment certificate (mTLS), used only
                                   until the device certificate arrives

    DeviceTls(data_dir).context()  an ``ssl.SSLContext`` for httpx (``verify=``), or None when the
                                   server URL is plain http (``--insecure`` fleets)
    make_csr(data_dir, name)       a new device key and a PEM certificate request for it

An https URL with no pinned CA is refused (``TlsSetupError``): the agent never falls back to the
system trust store or to no verification.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgegen.durable import atomic_write
from edgegen.errors import TlsSetupError


class DeviceTls:
    def __init__(self, data_dir: Path, passphrase: bytes | None = None) -> None:
        """``passphrase``: encrypts the device's private key file (PKCS#8, from the at-rest key)."""
        self.dir = Path(data_dir) / "trust"
        self.passphrase = passphrase

    @property
    def ca_path(self) -> Path:
        return self.dir / "fleet-ca.pem"

    def pin_ca(self, ca_pem: bytes) -> None:
        x509.load_pem_x509_certificate(ca_pem)  # refuse garbage before pinning it
        atomic_write(self.ca_path, ca_pem, label="tls_ca")

    def save_enrol_cert(self, cert_pem: bytes, key_pem: bytes) -> None:
        atomic_write(self.dir / "enrol.key", key_pem, 0o600, label="tls_key")
        atomic_write(self.dir / "enrol.pem", cert_pem, label="tls_cert")

    def save_device_cert(self, cert_pem: bytes) -> None:
        x509.load_pem_x509_certificate(cert_pem)
        atomic_write(self.dir / "device.pem", cert_pem, label="tls_cert")
        for name in ("enrol.pem", "enrol.key"):  # the bundle's certificate is no longer needed
            (self.dir / name).unlink(missing_ok=True)

    def client_cert(self) -> tuple[str, str, bytes | None] | None:
        """(certificate file, key file, key passphrase or None) to present, if any."""
        device = (self.dir / "device.pem", self.dir / "device.key")
        if all(p.exists() for p in device):
            return str(device[0]), str(device[1]), self._device_key_passphrase(device[1])
        enrol = (self.dir / "enrol.pem", self.dir / "enrol.key")
        if all(p.exists() for p in enrol):
            return str(enrol[0]), str(enrol[1]), None
        return None

    def _device_key_passphrase(self, path: Path) -> bytes | None:
        """The passphrase of the device key file; a key kept in the clear (enrolled before the device
        had an at-rest key) is encrypted now, once."""
        data = path.read_bytes()
        if b"ENCRYPTED PRIVATE KEY" in data:
            if self.passphrase is None:
                raise TlsSetupError(f"{path} is encrypted and this agent has no at-rest key (--at-rest-key)")
            return self.passphrase
        if self.passphrase is not None:
            key = serialization.load_pem_private_key(data, password=None)
            atomic_write(path, self._key_pem(key), 0o600, label="tls_key")  # type: ignore[arg-type]
            return self.passphrase
        return None

    def _key_pem(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self.passphrase) if self.passphrase is not None
            else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    def context(self, server_url: str) -> ssl.SSLContext | None:
        if not server_url.lower().startswith("https://"):
            return None
        if not self.ca_path.exists():
            raise TlsSetupError(f"{server_url} is https but {self.ca_path} holds no pinned fleet CA: "
                                "enrol with the bundle from `edgegen fleet enroll-token --bundle`")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert = self.client_cert()
        if cert is not None:
            ctx.load_cert_chain(cert[0], cert[1], password=cert[2])
        return ctx

    def make_csr(self, common_name: str) -> bytes:
        """A new device key (saved 0600) and a PEM CSR for it; the key never leaves the device."""
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(self.dir / "device.key", self._key_pem(key), 0o600, label="tls_key")
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or "edgegen device")]))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)
