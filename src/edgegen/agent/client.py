"""The device's HTTP client of the control plane: enrolment, desired state, metadata, reports.

Metadata bodies are read with a byte cap (``get_capped``) so an endless response cannot exhaust
memory; 401/403 become ``AuthError`` carrying the control plane's reason; other failures become
``FleetError``. Nothing returned here is trusted: the caller hands the bytes to ``trust.py``.
The transport is injectable (tests put a hostile mirror in between).
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

import httpx

from edgegen.errors import AuthError, FleetError, OversizeError


def _reason(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", ""))[:300] or r.reason_phrase
    except Exception:
        return r.text[:300] or r.reason_phrase


class ControlPlaneClient:
    def __init__(self, server: str, credential: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, max_metadata_bytes: int = 256 * 1024,
                 verify: ssl.SSLContext | None = None) -> None:
        """``verify``: the TLS context pinning the fleet CA (``agent.tls.DeviceTls.context``); None
        for a plain-http control plane (an https URL without it fails: there is no system trust)."""
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.server = server.rstrip("/")
        self.max_metadata_bytes = max_metadata_bytes
        self.http = httpx.Client(base_url=self.server, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=5.0),
                                 verify=verify if verify is not None else True)

    def close(self) -> None:
        self.http.close()

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code in (401, 403):
            raise AuthError(f"control plane refused {what} ({r.status_code}): {_reason(r)}")
        if r.status_code >= 400:
            raise FleetError(f"control plane answered {r.status_code} to {what}: {_reason(r)}")

    def get_capped(self, path: str, what: str, *, missing_ok: bool = False,
                   timeout: float | None = None) -> bytes | None:
        try:
            with self.http.stream("GET", path, **({"timeout": timeout} if timeout else {})) as r:
                if missing_ok and r.status_code == 404:
                    return None
                if r.status_code >= 400:
                    r.read()
                self._check(r, what)
                body = bytearray()
                for chunk in r.iter_raw(16 * 1024):
                    body += chunk
                    if len(body) > self.max_metadata_bytes:
                        raise OversizeError(f"{what}: response exceeds {self.max_metadata_bytes} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise FleetError(f"{what}: {exc}") from exc

    def _json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise FleetError(f"{what}: {exc}") from exc
        self._check(r, what)
        if len(r.content) > self.max_metadata_bytes * 64:
            raise OversizeError(f"{what}: response too large")
        try:
            return r.json()
        except json.JSONDecodeError as exc:
            raise FleetError(f"{what}: the control plane did not answer JSON") from exc

    # ---- calls ---------------------------------------------------------------------------------

    def enroll(self, token: str, name: str = "", labels: dict[str, str] | None = None,
               csr: bytes | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"token": token, "name": name, "labels": labels or {}}
        if csr is not None:
            body["csr"] = csr.decode()
        return self._json("POST", "/v1/enroll", "enrolment", json=body)

    def desired(self, adapters: tuple[str, ...] = ()) -> dict[str, Any]:
        """The desired state; ``adapters``: extra LoRA adapter streams to ask about (multi-LoRA)."""
        query = f"?adapters={quote(','.join(adapters))}" if adapters else ""
        return self._json("GET", f"/v1/device/desired{query}", "desired state")

    def root(self, version: int) -> bytes | None:
        return self.get_capped(f"/v1/root/{version}.json", f"root v{version}", missing_ok=True)

    def manifest(self, name: str, version: int) -> bytes:
        data = self.get_capped(f"/v1/device/manifests/{name}/{version}", f"manifest {name} v{version}")
        assert data is not None
        return data

    def delta(self, name: str, version: int, base_sha256: str) -> dict[str, Any] | None:
        """The control plane's delta offer from ``base_sha256`` (untrusted), or None (take the full transfer)."""
        data = self.get_capped(f"/v1/device/deltas/{name}/{version}?base={base_sha256}", f"delta to {name} v{version}",
                               missing_ok=True)
        if data is None:
            return None
        try:
            offer = json.loads(data)
        except ValueError as exc:
            raise FleetError("delta offer: the control plane did not answer JSON") from exc
        return offer if isinstance(offer, dict) else None

    def blob_url(self, sha256: str) -> str:
        return f"/v1/device/blobs/{sha256}"

    def report(self, event: dict[str, Any]) -> None:
        self._json("POST", "/v1/device/report", "report", json=event)

    def put_profile(self, profile: dict[str, Any]) -> None:
        """Tell the control plane this device's profile (rollouts select by it)."""
        self._json("PUT", "/v1/device/profile", "device profile", json=profile)
