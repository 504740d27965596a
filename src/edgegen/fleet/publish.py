"""The publisher's side: build a signed release on this machine and upload it; an admin API client.

    build_release(artifact, name=, version=, key=, ...)   hash the artifact, zstd-compress it for
                                                          transfer, describe it (architecture,
                                                          quantization, engine, format, the planner's
                                                          facts) and sign the manifest

An artifact is a GGUF file or an ONNX Runtime GenAI folder. A folder is packed into the canonical tar
of ``formats.folder_pack``: the manifest's sha256 and size are the tar's, so one signature covers
every file; it is compressed and delta'd like any file, and the device unpacks it into its A/B slot.
    AdminClient(url, token)                               the admin HTTP API: blobs, versions, root,
                                                          enrolment tokens, devices, revocation, events

Private keys never leave this machine: the control plane receives signed bytes only.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from edgegen.durable import commit_file
from edgegen.errors import FleetError, UserInputError
from edgegen.fleet.signing import Manifest, SigningKey, Transfer, canonical_json, sign

CHUNK = 1 << 20
log = logging.getLogger(__name__)


def sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def describe_artifact(path: Path) -> tuple[str, str]:
    """(architecture, quantization) of a GGUF (the type holding most parameters) or of an ONNX folder
    (genai_config.json's model type; the planner's storage-type label, e.g. ``INT4+FP32``)."""
    if Path(path).is_dir():
        from edgegen.plan.facts import model_facts
        from edgegen.runtime.ort_engine import read_genai_config

        return str(read_genai_config(path)["model"].get("type", "unknown")), model_facts(path).variant
    from edgegen.formats.gguf_file import describe

    s = describe(path)
    quant = Counter(s.types).most_common(1)[0][0] if s.types else "unknown"
    return s.architecture, quant


def plan_facts(path: Path) -> dict[str, Any] | None:
    """The planner's facts about ``path`` for the manifest (None when they cannot be read: an
    adapter, an architecture the planner does not know)."""
    from edgegen.plan.facts import model_facts

    try:
        facts = model_facts(path).to_dict()
    except Exception as exc:  # facts are an optional extra: a file the planner cannot read ships without them
        log.info("no planner facts for %s: %s", path, exc)
        return None
    facts["path"] = ""  # the publisher's path means nothing on a device
    return facts


def compress_zstd(src: Path, dst: Path, level: int = 3) -> tuple[str, int]:
    import zstandard

    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        zstandard.ZstdCompressor(level=level, threads=-1).copy_stream(fin, fout, size=src.stat().st_size)
    commit_file(tmp, dst)
    return sha256_file(dst)


@dataclass(frozen=True)
class Release:
    manifest: Manifest
    envelope: bytes
    artifact: Path
    zstd_path: Path | None


def build_release(
    artifact: Path,
    *,
    name: str,
    version: int,
    key: SigningKey,
    work_dir: Path,
    expires_days: float = 90.0,
    now: datetime | None = None,
    architecture: str | None = None,
    quantization: str | None = None,
    zstd_level: int | None = 3,
    base_sha256: str | None = None,
) -> Release:
    """Sign a manifest for ``artifact`` (a GGUF file, or an ONNX Runtime GenAI folder, packed into
    ``work_dir`` as a canonical tar); with ``base_sha256`` the artifact must be a LoRA adapter GGUF
    and the manifest (kind ``adapter``) binds it to that base model file. The manifest records the
    engine and format that run it and, for models, the planner's facts (rollouts by fit)."""
    from edgegen.runtime.base import ENGINE_FOR_FORMAT, ModelFormat, detect_format

    artifact = Path(artifact)
    if not artifact.exists():
        raise UserInputError(f"no artifact at {artifact}")
    # a folder must be an ONNX Runtime GenAI model (InvalidModelError naming what is missing); a file is
    # a GGUF, read by describe_artifact unless the caller gives architecture and quantization itself
    fmt = detect_format(artifact) if artifact.is_dir() else ModelFormat.GGUF
    if base_sha256 is not None:
        from edgegen.formats.lora_gguf import adapter_info

        adapter_info(artifact)  # InvalidModelError unless general.type = adapter, adapter.type = lora
    if architecture is None or quantization is None:
        arch, quant = describe_artifact(artifact)
        architecture = architecture if architecture is not None else arch
        quantization = quantization if quantization is not None else quant
    facts = plan_facts(artifact) if base_sha256 is None else None
    if artifact.is_dir():
        from edgegen.formats.folder_pack import pack

        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = work_dir / f"{name}-v{version}.tar.tmp"
        with open(tmp, "wb") as out:
            pack(artifact, out)
        packed = work_dir / f"{name}-v{version}.tar"
        commit_file(tmp, packed)
        artifact = packed
    sha, size = sha256_file(artifact)
    transfers: dict[str, Transfer] = {}
    zst: Path | None = None
    if zstd_level is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        zst = work_dir / f"{sha}.zst"
        zsha, zsize = compress_zstd(artifact, zst, zstd_level)
        transfers["zstd"] = Transfer(zsha, zsize)
    now = now or datetime.now(timezone.utc)
    manifest = Manifest(
        name=name, version=version, sha256=sha, size=size, architecture=architecture,
        quantization=quantization, created=now, expires=now + timedelta(days=expires_days), transfers=transfers,
        engine=ENGINE_FOR_FORMAT[fmt].value, format=fmt.value,
        kind="adapter" if base_sha256 is not None else "model", base_sha256=base_sha256, plan=facts,
    )
    envelope = canonical_json(sign(manifest.to_signed(), [key]))
    return Release(manifest, envelope, artifact, zst)


class AdminClient:
    """Thin client of the admin API; HTTP errors become ``FleetError``/``UserInputError``."""

    def __init__(self, url: str, token: str, *, timeout: float = 600.0, transport: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | None = None):
        """``verify``: for https, the operator's TLS context (``fleet.tls.admin_context``)."""
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout, transport=transport, verify=verify if verify is not None else True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise FleetError(f"control plane unreachable at {self.http.base_url}: {exc}") from exc
        if r.status_code == 401:
            raise UserInputError(f"control plane at {self.http.base_url} refused the admin token: {_detail(r)}")
        if r.status_code in (400, 404, 409, 422):
            raise UserInputError(f"control plane refused {method} {path}: {_detail(r)}")
        if r.status_code >= 400:
            raise FleetError(f"control plane answered {r.status_code} to {method} {path}: {_detail(r)}")
        return r.json()

    def upload_blob(self, path: Path, sha256: str) -> Any:
        def chunks():  # type: ignore[no-untyped-def]
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return self._call("PUT", f"/v1/admin/blobs/{sha256}", content=chunks())

    def publish(self, release: Release) -> Any:
        self.upload_blob(release.artifact, release.manifest.sha256)
        if release.zstd_path is not None:
            self.upload_blob(release.zstd_path, release.manifest.transfers["zstd"].sha256)
        return self.publish_envelope(release.envelope)

    def publish_envelope(self, envelope: bytes) -> Any:
        return self._call("POST", "/v1/admin/versions", content=envelope,
                          headers={"Content-Type": "application/json"})

    def release(self, model: str, version: int) -> dict[str, Any]:
        """Every device of ``model`` outside a rollout runs ``version`` now (no stages, no gates):
        ``fleet publish --to all --now``. Publishing alone ships nothing."""
        return self._call("POST", f"/v1/admin/rollouts/release/{model}", json={"version": version})

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/models")

    def next_version(self, name: str) -> int:
        for m in self.models():
            if m["name"] == name:
                return max((v["version"] for v in m["versions"]), default=0) + 1
        return 1

    def push_root(self, data: bytes) -> Any:
        return self._call("POST", "/v1/admin/root", content=data, headers={"Content-Type": "application/json"})

    def enroll_token(self, *, model: str | None = None, group: str | None = None,
                     labels: dict[str, str] | None = None, ttl_s: float | None = None) -> str:
        body = {"model": model, "group": group, "labels": labels or {}, "ttl_s": ttl_s}
        return self._call("POST", "/v1/admin/enroll-tokens", json=body)["token"]

    def enroll_bundle(self, *, model: str | None = None, group: str | None = None,
                      labels: dict[str, str] | None = None, ttl_s: float | None = None) -> dict[str, Any]:
        """A token with its enrolment bundle (fleet CA; on a mutual-TLS fleet an enrolment certificate)."""
        body = {"model": model, "group": group, "labels": labels or {}, "ttl_s": ttl_s}
        out = self._call("POST", "/v1/admin/enroll-tokens", json=body)
        return {"server": str(self.http.base_url).rstrip("/"), **out.get("bundle", {"token": out["token"]})}

    def devices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/devices")

    def device(self, device_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/devices/{device_id}")

    def revoke(self, device_id: str, reason: str = "") -> Any:
        return self._call("POST", f"/v1/admin/devices/{device_id}/revoke", json={"reason": reason})

    def set_device(self, device_id: str, **fields: Any) -> Any:
        return self._call("PATCH", f"/v1/admin/devices/{device_id}", json=fields)

    def events(self, device_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if device_id:
            params["device_id"] = device_id
        return self._call("GET", "/v1/admin/events", params=params)


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))[:500]
    except Exception:
        return r.text[:500]
