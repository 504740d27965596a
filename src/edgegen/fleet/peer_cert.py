"""The client certificate of each TLS connection, handed to the app as the ASGI TLS extension.

uvicorn (0.49 here) verifies client certificates (``ssl_cert_reqs=CERT_REQUIRED``) but does not
pass them to the app, so the app cannot tell *which* device's certificate a request came with.

    PeerCertProtocol      uvicorn's h11 protocol class, one instance per connection; once the TLS
                          handshake is done it reads the verified peer certificate
                          (``ssl_object.getpeercert(binary_form=True)``) and sets, on every request
                          of that connection, ``scope["extensions"]["tls"]`` as the ASGI TLS extension
                          defines it (``client_cert_chain``: PEM strings, leaf first; here the leaf
                          only, as Python's ``ssl`` exposes it; ``client_cert_name``; ``client_cert_error``)
    peer_certificate(scope) -> x509.Certificate | None   the leaf, parsed with ``cryptography``
    certificate_name(cert) -> str | None                 its subject's common name

Chosen over a TLS-terminating proxy or a second listener: it is a subclass of the protocol uvicorn
already runs (``uvicorn.Config(http=PeerCertProtocol)``, passed by ``FleetCA.server_ssl``), the
certificate comes from the same handshake that verified it, and the app reads it the way the ASGI
spec says (``https://asgi.readthedocs.io/en/latest/specs/tls.html``), so a server that implements
the extension itself needs no change here. Without the extension in the scope the control plane
refuses mutual-TLS requests (``fleet/app.py``'s ``ClientCertGate``): fail closed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["PeerCertProtocol", "certificate_name", "peer_certificate"]


class PeerCertProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            return
        pem = ssl.DER_cert_to_PEM_cert(der)
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
        tls = {"client_cert_chain": [pem], "client_cert_name": name, "client_cert_error": None,
               "server_cert": None, "tls_version": None, "cipher_suite": None}
        app = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_peer


def peer_certificate(scope: Any) -> x509.Certificate | None:
    """The verified client certificate of the request's connection (None: none, or no TLS extension)."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode() if isinstance(chain[0], str) else chain[0])


def certificate_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
