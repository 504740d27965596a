"""The fleet's own certificate authority: TLS for ``fleet serve``, and device certificates (mTLS).

    <keys>/tls/ca.pem, ca.key          the fleet CA (ECDSA P-256, 10 years); devices pin ca.pem from
                                       their enrolment bundle, so no public CA is involved
    <keys>/tls/server.pem, server.key  the control plane's certificate, for the names and IP
                                       addresses given at ``fleet keys init --host`` (and localhost)
    <keys>/tls/admin.pem, admin.key    the operator's client certificate (the CLI presents it to a
                                       mutual-TLS control plane)
    <keys>/tls/issued/<serial>.pem     every client certificate the CA issued (to revoke by device)
    <keys>/tls/crl.pem                 the certificate revocation list (X.509 CRL signed by the CA)

    FleetCA.init(keys_dir, hosts)      make the CA and the server certificate (once)
    FleetCA.open(keys_dir)             load them
    ca.issue_client(csr_pem, name, days)   sign a device's CSR: CN = device id (or ``enrol:<token>``),
                                           extendedKeyUsage clientAuth only; the device's private
                                           key never leaves the device
    ca.server_ssl(mutual)              the uvicorn keyword arguments: server certificate, and with
                                       ``mutual`` the CA whose client certificates are REQUIRED on
                                       every connection (``ssl.CERT_REQUIRED``) and the protocol
                                       class that hands each request its client certificate
                                       (``peer_cert.PeerCertProtocol``)
    ca.revoke_subject(cn) / ca.revoke_serial(serial)   put certificates on the CRL (a revoked device:
                                       every certificate issued to its id)
    ca.is_revoked(cert)                on the CRL (re-read when crl.pem changes on disk)
    admin_context(keys_dir)            the operator's ``ssl.SSLContext``: trusts only the fleet CA,
                                       presents admin.pem when it exists

Certificates are made with ``cryptography``'s X.509 builder (its documented recipe for a CA and
leaf certificates). This module does not open sockets.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgegen.durable import atomic_write
from edgegen.errors import TlsSetupError

__all__ = ["FleetCA", "TlsSetupError", "admin_context", "key_pem", "new_key"]


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgegen fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class FleetCA:
    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    _revoked: dict[int, datetime] = field(default_factory=dict)  # serial -> revocation time (the CRL)
    _crl_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of crl.pem when last read

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def _record_issued(self, cert: x509.Certificate) -> None:
        atomic_write(self.dir / "issued" / f"{cert.serial_number:x}.pem",
                     cert.public_bytes(serialization.Encoding.PEM), label="tls_cert")

    def _load_crl(self) -> dict[int, datetime]:
        """The revoked serials from crl.pem, whose signature must verify under this CA."""
        try:
            st = self.crl_path.stat()
        except FileNotFoundError:
            self._revoked, self._crl_stamp = {}, None
            return self._revoked
        if self._crl_stamp == (st.st_mtime_ns, st.st_size):
            return self._revoked
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        if not crl.is_signature_valid(self.key.public_key()):
            raise TlsSetupError(f"{self.crl_path} is not signed by the fleet CA")
        self._revoked = {r.serial_number: r.revocation_date_utc for r in crl}
        self._crl_stamp = (st.st_mtime_ns, st.st_size)
        return self._revoked

    def crl(self, *, now: datetime | None = None, days: float = 7) -> bytes:
        """The CRL (PEM) of every revoked serial, freshly signed (valid ``days``)."""
        return self._sign_crl(self._load_crl(), now or datetime.now(timezone.utc), days)

    def _sign_crl(self, revoked: dict[int, datetime], now: datetime, days: float = 7) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=days)))
        for serial, when in sorted(revoked.items()):
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(when).build())
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def revoke_serial(self, serial: int, *, now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        revoked = dict(self._load_crl())
        if serial in revoked:
            return
        revoked[serial] = now
        atomic_write(self.crl_path, self._sign_crl(revoked, now), label="tls_cert")
        st = self.crl_path.stat()
        self._revoked, self._crl_stamp = revoked, (st.st_mtime_ns, st.st_size)

    def revoke_subject(self, common_name: str) -> list[int]:
        """Revoke every certificate this CA issued to ``common_name`` (a device id); their serials."""
        serials = []
        for path in sorted((self.dir / "issued").glob("*.pem")):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if names and names[0].value == common_name:
                self.revoke_serial(cert.serial_number)
                serials.append(cert.serial_number)
        return serials

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return cert.serial_number in self._load_crl()

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def init(cls, keys_dir: Path, hosts: list[str] | tuple[str, ...] = (), *, now: datetime | None = None) -> FleetCA:
        d = Path(keys_dir) / "tls"
        if (d / "ca.key").exists():
            raise TlsSetupError(f"{d} already holds a fleet CA")
        now = now or datetime.now(timezone.utc)
        key = new_key()
        cert = (x509.CertificateBuilder().subject_name(_name("edgegen fleet CA")).issuer_name(_name("edgegen fleet CA"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        atomic_write(d / "ca.key", key_pem(key), 0o600, label="tls_key")
        atomic_write(d / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), label="tls_cert")
        ca = cls(d, cert, key)
        ca.make_server_cert(hosts, now=now)
        admin_cert, admin_key = ca.issue_client_key("admin", days=825)
        atomic_write(d / "admin.key", admin_key, 0o600, label="tls_key")
        atomic_write(d / "admin.pem", admin_cert, label="tls_cert")
        return ca

    @classmethod
    def open(cls, keys_dir: Path) -> FleetCA:
        d = Path(keys_dir) / "tls"
        try:
            cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise TlsSetupError(f"no fleet CA in {d}: run `edgegen fleet keys init` "
                                "(or serve with --insecure)") from exc
        except ValueError as exc:
            raise TlsSetupError(f"unreadable fleet CA in {d}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsSetupError(f"{d}/ca.key is not an EC key")
        return cls(d, cert, key)

    def _leaf(self, subject: x509.Name, public_key: Any, days: float, usage: x509.ObjectIdentifier,
              sans: list[x509.GeneralName], now: datetime | None) -> x509.Certificate:
        now = now or datetime.now(timezone.utc)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject).public_key(public_key)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def make_server_cert(self, hosts: list[str] | tuple[str, ...] = (), *, days: float = 825,
                         now: datetime | None = None) -> Path:
        names = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]))
        key = new_key()
        cert = self._leaf(_name(names[0] if not hosts else hosts[0]), key.public_key(), days,
                          ExtendedKeyUsageOID.SERVER_AUTH, [_san(h) for h in names], now)
        atomic_write(self.dir / "server.key", key_pem(key), 0o600, label="tls_key")
        atomic_write(self.dir / "server.pem", cert.public_bytes(serialization.Encoding.PEM), label="tls_cert")
        return self.dir / "server.pem"

    def issue_client(self, csr_pem: bytes | str, common_name: str, *, days: float = 365,
                     now: datetime | None = None) -> bytes:
        """A client certificate (PEM) for the key in ``csr_pem``, named ``common_name``."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except ValueError as exc:
            raise TlsSetupError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise TlsSetupError("the certificate request's signature does not verify")
        cert = self._leaf(_name(common_name), csr.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH, [], now)
        self._record_issued(cert)
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_client_key(self, common_name: str, *, days: float) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) made here: only for the short-lived enrolment certificate of a bundle."""
        key = new_key()
        cert = self._leaf(_name(common_name), key.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH, [], None)
        self._record_issued(cert)
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    def server_ssl(self, mutual: bool = False) -> dict[str, Any]:
        kw: dict[str, Any] = {"ssl_certfile": str(self.dir / "server.pem"), "ssl_keyfile": str(self.dir / "server.key")}
        if mutual:
            from edgegen.fleet.peer_cert import PeerCertProtocol

            kw.update(ssl_ca_certs=str(self.ca_path), ssl_cert_reqs=ssl.CERT_REQUIRED, http=PeerCertProtocol)
        return kw


def admin_context(keys_dir: Path) -> ssl.SSLContext:
    """TLS for the operator's CLI: the fleet CA as the only trust anchor, the admin certificate."""
    d = Path(keys_dir) / "tls"
    if not (d / "ca.pem").exists():
        raise TlsSetupError(f"no fleet CA in {d} to verify the control plane with (pass --keys)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / "ca.pem"))
    if (d / "admin.pem").exists() and (d / "admin.key").exists():
        ctx.load_cert_chain(str(d / "admin.pem"), str(d / "admin.key"))
    return ctx
