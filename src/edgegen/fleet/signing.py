"""Ed25519 keys, canonical JSON and signed metadata: the format shared by control plane and agent.

    canonical_json(obj)             sorted keys, no whitespace, UTF-8: the bytes that get signed
    SigningKey / PublicKey          Ed25519 via ``cryptography``; keyid = sha256(raw public key)
    sign(signed, keys)              -> envelope ``{"signed": {...}, "signatures": [{keyid, sig}]}``
    RootMeta / Manifest             the root and artifact metadata, parsed and structurally validated
    DesiredState                    the short-lived "what this device should run now" statement,
                                    signed by the online ``freshness`` role (TUF's timestamp idea)
    count_valid(envelope, role, keys)  how many distinct trusted keys of a role signed the envelope
    check_root_successor(old, env)  a root rotation is valid only if signed by a threshold of the
                                    old root keys AND of the new ones, with version old + 1

A root lists the public keys and, per role (``root``, ``targets``, and optionally ``freshness``:
the control plane's online key, whose only power is to say which already-signed version a device
should run now, for minutes), the key ids and threshold.
A manifest (signed by the ``targets`` role) binds a model name and version to the artifact's
sha256 and size, its architecture/quantization, creation and expiry, and the sha256/size of each
transfer encoding (``zstd``); a manifest of kind ``adapter`` (a LoRA GGUF) also binds the sha256 of
the one base model file the adapter applies to. Whether a manifest may be *installed* (rollback, freeze, binding) is
decided by ``edgegen.agent.trust``; this module does no I/O except ``SigningKey.save/load``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgegen.errors import KeyFileError, MetadataFormatError, SignatureError

SPEC_VERSION = "1"
ROLES = ("root", "targets")
OPTIONAL_ROLES = ("freshness",)
MODEL, ADAPTER = "model", "adapter"  # Manifest.kind


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError) as exc:
        raise MetadataFormatError(f"bad timestamp {s!r}") from exc


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def keyid_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


# ---- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def keyid(self) -> str:
        return keyid_of(self.raw)

    def to_dict(self) -> dict[str, str]:
        return {"keytype": "ed25519", "public": self.raw.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> PublicKey:
        if not isinstance(d, dict) or d.get("keytype") != "ed25519":
            raise MetadataFormatError("only ed25519 keys are supported")
        try:
            raw = bytes.fromhex(d["public"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataFormatError("bad public key encoding") from exc
        if len(raw) != 32:
            raise MetadataFormatError("an ed25519 public key has 32 bytes")
        return cls(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey(
            private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def save(self, path: Path) -> None:
        """PKCS#8 PEM in a new file created 0600 (never overwrites a key)."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise KeyFileError(f"no key file at {path}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a readable private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 key")
        return cls(key)


# ---- envelopes -------------------------------------------------------------------------------------


def sign(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    data = canonical_json(signed)
    return {"signed": signed, "signatures": [{"keyid": k.keyid, "sig": k.sign(data).hex()} for k in keys]}


def load_envelope(data: bytes, expected_type: str) -> dict[str, Any]:
    try:
        env = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataFormatError(f"{expected_type} metadata is not JSON") from exc
    if not isinstance(env, dict) or not isinstance(env.get("signed"), dict) or not isinstance(
        env.get("signatures"), list
    ):
        raise MetadataFormatError(f"{expected_type} metadata is not a signed envelope")
    if env["signed"].get("_type") != expected_type:
        raise MetadataFormatError(f"expected {expected_type} metadata, got {env['signed'].get('_type')!r}")
    return env


def count_valid(env: dict[str, Any], keyids: tuple[str, ...], keys: dict[str, PublicKey]) -> int:
    """Distinct trusted key ids (of ``keyids``) with a valid signature over ``env['signed']``."""
    data = canonical_json(env["signed"])
    good: set[str] = set()
    for s in env["signatures"]:
        if not isinstance(s, dict):
            continue
        keyid, sig = s.get("keyid"), s.get("sig")
        if keyid not in keyids or keyid not in keys or keyid in good or not isinstance(sig, str):
            continue
        try:
            raw = bytes.fromhex(sig)
        except ValueError:
            continue
        if keys[keyid].verify(raw, data):
            good.add(keyid)
    return len(good)


def require_threshold(env: dict[str, Any], role: Role, keys: dict[str, PublicKey], what: str) -> None:
    n = count_valid(env, role.keyids, keys)
    if n >= role.threshold:
        return
    signers = {s.get("keyid") for s in env["signatures"] if isinstance(s, dict)}
    if not signers & set(role.keyids):
        raise SignatureError(f"{what} is not signed by any trusted key (signed by {len(signers)} unknown key(s))")
    raise SignatureError(f"{what} has {n} valid signature(s) from trusted keys, needs {role.threshold}")


# ---- metadata types --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


def _field(d: dict[str, Any], key: str, typ: type, what: str) -> Any:
    value = d.get(key)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise MetadataFormatError(f"{what}: field {key!r} missing or not {typ.__name__}")
    return value


@dataclass(frozen=True)
class RootMeta:
    version: int
    expires: datetime
    keys: dict[str, PublicKey]
    roles: dict[str, Role]

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> RootMeta:
        version = _field(d, "version", int, "root")
        keys_d = _field(d, "keys", dict, "root")
        keys = {}
        for keyid, kd in keys_d.items():
            key = PublicKey.from_dict(kd)
            if key.keyid != keyid:
                raise MetadataFormatError("root: a key id does not match its key")
            keys[keyid] = key
        roles = {}
        roles_d = _field(d, "roles", dict, "root")
        for name in ROLES + tuple(r for r in OPTIONAL_ROLES if r in roles_d):
            rd = _field(roles_d, name, dict, "root roles")
            keyids = tuple(_field(rd, "keyids", list, f"role {name}"))
            threshold = _field(rd, "threshold", int, f"role {name}")
            if threshold < 1 or len(set(keyids)) < threshold or not set(keyids) <= set(keys):
                raise MetadataFormatError(f"root: role {name} cannot meet its threshold with its keys")
            roles[name] = Role(keyids, threshold)
        if version < 1:
            raise MetadataFormatError("root: version must be >= 1")
        return cls(version, parse_time(_field(d, "expires", str, "root")), keys, roles)

    @staticmethod
    def make_signed(version: int, expires: datetime, root_keys: list[PublicKey],
                    targets_keys: list[PublicKey], root_threshold: int = 1,
                    targets_threshold: int = 1, freshness_keys: Sequence[PublicKey] = ()) -> dict[str, Any]:
        keys = {k.keyid: k.to_dict() for k in [*root_keys, *targets_keys, *freshness_keys]}
        roles = {
            "root": {"keyids": [k.keyid for k in root_keys], "threshold": root_threshold},
            "targets": {"keyids": [k.keyid for k in targets_keys], "threshold": targets_threshold},
        }
        if freshness_keys:
            roles["freshness"] = {"keyids": [k.keyid for k in freshness_keys], "threshold": 1}
        return {
            "_type": "root", "spec_version": SPEC_VERSION, "version": version,
            "expires": format_time(expires), "keys": keys, "roles": roles,
        }


def verify_root(env: dict[str, Any]) -> RootMeta:
    """A root that meets its own root-role threshold (the starting point of trust)."""
    root = RootMeta.from_signed(env["signed"])
    require_threshold(env, root.roles["root"], root.keys, f"root v{root.version}")
    return root


def check_root_successor(trusted: RootMeta, env: dict[str, Any]) -> RootMeta:
    """Root v(n+1) must be signed by a threshold of root v(n)'s root keys and of its own."""
    new = RootMeta.from_signed(env["signed"])
    require_threshold(env, trusted.roles["root"], trusted.keys, f"root v{new.version} (by the old root)")
    require_threshold(env, new.roles["root"], new.keys, f"root v{new.version} (by itself)")
    if new.version != trusted.version + 1:
        from edgegen.errors import RollbackError

        raise RollbackError(f"root v{new.version} cannot follow trusted root v{trusted.version}")
    return new


@dataclass(frozen=True)
class Transfer:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    sha256: str
    size: int
    architecture: str
    quantization: str
    created: datetime
    expires: datetime
    transfers: dict[str, Transfer] = field(default_factory=dict)
    engine: str = ""  # optional: the engine that runs the artifact (llamacpp | ort); signed when set
    format: str = ""  # optional: the artifact's format (gguf | onnx); signed when set
    kind: str = "model"  # "model" or "adapter" (a LoRA GGUF that applies to exactly one base)
    base_sha256: str | None = None  # adapters: the sha256 of the base model file it was made for
    plan: dict[str, Any] | None = None  # optional: the planner's facts (``plan.ModelFacts.to_dict``); signed when set

    @property
    def is_adapter(self) -> bool:
        return self.kind == ADAPTER

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> Manifest:
        sha = _field(d, "sha256", str, "manifest")
        if not _is_sha256(sha):
            raise MetadataFormatError("manifest: sha256 must be 64 lowercase hex digits")
        kind = d.get("kind", MODEL)
        if kind not in (MODEL, ADAPTER):
            raise MetadataFormatError(f"manifest: unknown artifact kind {kind!r}")
        base = d.get("base_sha256")
        if kind == ADAPTER and not (isinstance(base, str) and _is_sha256(base)):
            raise MetadataFormatError("manifest: an adapter must name its base model's sha256")
        if kind == MODEL and base is not None:
            raise MetadataFormatError("manifest: only an adapter has a base model")
        transfers = {}
        for enc, td in (d.get("transfers") or {}).items():
            if not isinstance(td, dict):
                raise MetadataFormatError("manifest: bad transfers entry")
            transfers[enc] = Transfer(_field(td, "sha256", str, "transfer"), _field(td, "size", int, "transfer"))
        plan = d.get("plan")
        if plan is not None and not isinstance(plan, dict):
            raise MetadataFormatError("manifest: plan must be an object")
        version = _field(d, "version", int, "manifest")
        size = _field(d, "size", int, "manifest")
        if version < 1 or size < 0:
            raise MetadataFormatError("manifest: version must be >= 1 and size >= 0")
        return cls(
            name=_field(d, "name", str, "manifest"), version=version, sha256=sha, size=size,
            architecture=str(d.get("architecture", "")), quantization=str(d.get("quantization", "")),
            created=parse_time(_field(d, "created", str, "manifest")),
            expires=parse_time(_field(d, "expires", str, "manifest")), transfers=transfers,
            engine=str(d.get("engine", "")), format=str(d.get("format", "")),
            kind=kind, base_sha256=base, plan=plan,
        )

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": "manifest", "spec_version": SPEC_VERSION, "name": self.name, "version": self.version,
            "sha256": self.sha256, "size": self.size, "architecture": self.architecture,
            "quantization": self.quantization, "created": format_time(self.created),
            "expires": format_time(self.expires),
            "transfers": {k: {"sha256": t.sha256, "size": t.size} for k, t in sorted(self.transfers.items())},
            **({"kind": ADAPTER, "base_sha256": self.base_sha256} if self.is_adapter else {}),
        } | ({"engine": self.engine} if self.engine else {}) | ({"format": self.format} if self.format else {}) | (
            {"plan": self.plan} if self.plan is not None else {})


@dataclass(frozen=True)
class DesiredState:
    """What one device should run now: ``(model, version)`` (``version`` None: nothing), valid from
    ``issued`` until ``expires`` (minutes later); ``adapters``: for the extra LoRA adapter streams the
    device asked about, ``{name: version or None}`` (absent from statements that answer none).
    Signed by the ``freshness`` role; a device refuses a statement for another device, one older
    than the newest it saw, and one past ``expires`` (a replayed "stay where you are" answer is a
    freeze attack, python-tuf's ``test_freeze_attack``)."""

    device: str
    model: str | None
    version: int | None
    issued: datetime
    expires: datetime
    adapters: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> DesiredState:
        model, version = d.get("model"), d.get("version")
        adapters = d.get("adapters", {})
        if not isinstance(adapters, dict) or not all(
                isinstance(k, str) and (v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1))
                for k, v in adapters.items()):
            raise MetadataFormatError("desired state: adapters must map names to integers >= 1 or null")
        if model is not None and not isinstance(model, str):
            raise MetadataFormatError("desired state: model must be a string or null")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise MetadataFormatError("desired state: version must be an integer >= 1 or null")
        return cls(device=_field(d, "device", str, "desired state"), model=model, version=version,
                   issued=parse_time(_field(d, "issued", str, "desired state")),
                   expires=parse_time(_field(d, "expires", str, "desired state")), adapters=dict(adapters))

    def to_signed(self) -> dict[str, Any]:
        return {"_type": "desired", "spec_version": SPEC_VERSION, "device": self.device, "model": self.model,
                "version": self.version, "issued": format_time(self.issued), "expires": format_time(self.expires),
                **({"adapters": dict(sorted(self.adapters.items()))} if self.adapters else {})}
