"""The model registry: content-addressed blobs, immutable signed versions, the root metadata chain.

    BlobStore.put(chunks)          stream bytes into ``<data>/blobs/sha256/<hex>`` (temp + fsync +
                                   os.replace); the address is the sha256 of the content
    publish(session, envelope)     accept a manifest signed by the current root's ``targets`` role
                                   whose blobs are stored, whose version is strictly greater than
                                   every published version of that model, and which has not expired
    add_root / import_root_chain   accept root v(n+1) only if signed by root v(n) and by itself
    current_root / root_chain      what devices are handed at enrolment

Versions are immutable: nothing here updates or deletes a ``ModelVersion`` or a blob. Signing
happens on the publisher's machine (``publish.py``); the control plane only verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgegen.durable import fsync_dir
from edgegen.errors import FleetError, PublishError, TrustError, UserInputError
from edgegen.fleet.db import Blob, Model, ModelVersion, RootVersion, utcnow
from edgegen.fleet.signing import (
    Manifest,
    RootMeta,
    canonical_json,
    check_root_successor,
    load_envelope,
    require_threshold,
    verify_root,
)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise UserInputError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.root / "sha256" / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def begin(self, *, max_bytes: int) -> BlobWriter:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, max_bytes)

    def put(self, chunks: Iterable[bytes], *, expected_sha256: str | None = None, max_bytes: int) -> tuple[str, int]:
        """Store a stream; refuse (and leave nothing behind) on a hash mismatch or over ``max_bytes``."""
        writer = self.begin(max_bytes=max_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(expected_sha256)
        finally:
            writer.abort()


class BlobWriter:
    """One upload in progress: a temp file beside the store; ``commit`` renames it to its address."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self.store, self.max_bytes = store, max_bytes
        self._h, self.size = hashlib.sha256(), 0
        fd, self._tmp = tempfile.mkstemp(dir=store.root / "sha256", prefix=".upload-")
        self._f = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PublishError(f"upload exceeds {self.max_bytes} bytes")
        self._h.update(chunk)
        self._f.write(chunk)

    def commit(self, expected_sha256: str | None = None) -> tuple[str, int]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        sha = self._h.hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise PublishError(f"uploaded bytes hash to {sha}, not {expected_sha256}")
        os.replace(self._tmp, self.store.path(sha))  # the file was fsynced above
        fsync_dir(self.store.root / "sha256")
        return sha, self.size

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


def record_blob(session: Session, sha256: str, size: int) -> Blob:
    blob = session.get(Blob, sha256)
    if blob is None:
        blob = Blob(sha256=sha256, size=size)
        session.add(blob)
    elif blob.size != size:
        raise FleetError(f"blob {sha256} recorded with size {blob.size}, file has {size}")
    return blob


# ---- root metadata -------------------------------------------------------------------------------


def current_root(session: Session) -> tuple[RootMeta, str] | None:
    row = session.scalars(select(RootVersion).order_by(RootVersion.version.desc()).limit(1)).first()
    if row is None:
        return None
    return RootMeta.from_signed(json.loads(row.envelope)["signed"]), row.envelope


def root_chain(session: Session) -> list[str]:
    return list(session.scalars(select(RootVersion.envelope).order_by(RootVersion.version)))


def add_root(session: Session, data: bytes) -> RootMeta:
    """Append root v(n+1) (or v1 on an empty registry); idempotent for an identical known version."""
    try:
        env = load_envelope(data, "root")
        cur = current_root(session)
        if cur is None:
            new = verify_root(env)
            if new.version != 1:
                raise PublishError(f"the first root must be version 1, got {new.version}")
        else:
            known = session.get(RootVersion, RootMeta.from_signed(env["signed"]).version)
            if known is not None:
                if json.loads(known.envelope) == env:
                    return RootMeta.from_signed(env["signed"])
                raise PublishError("a different root with this version is already published")
            new = check_root_successor(cur[0], env)
    except TrustError as exc:
        raise PublishError(f"root metadata refused: {exc}") from exc
    session.add(RootVersion(version=new.version, envelope=canonical_json(env).decode()))
    session.flush()
    return new


def import_root_chain(session: Session, keys_dir: Path) -> int:
    """Import ``<keys_dir>/root/N.root.json`` files newer than what is stored; returns how many."""
    files = sorted((Path(keys_dir) / "root").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    before = len(root_chain(session))
    for path in files:
        add_root(session, path.read_bytes())
    session.commit()
    return len(root_chain(session)) - before


# ---- versions ------------------------------------------------------------------------------------


def latest_version_number(session: Session, name: str) -> int:
    return session.scalar(
        select(func.max(ModelVersion.version)).join(Model).where(Model.name == name)
    ) or 0


def publish(session: Session, data: bytes, blobs: BlobStore, now: datetime | None = None) -> ModelVersion:
    """Verify and record a signed manifest (see module docstring); the caller commits."""
    now = now or utcnow()
    cur = current_root(session)
    if cur is None:
        raise PublishError("no root metadata: run `edgegen fleet keys init` and restart with --keys")
    root = cur[0]
    try:
        env = load_envelope(data, "manifest")
        manifest = Manifest.from_signed(env["signed"])
        require_threshold(env, root.roles["targets"], root.keys, f"manifest {manifest.name} v{manifest.version}")
    except TrustError as exc:
        raise PublishError(f"manifest refused: {exc}") from exc
    if now >= manifest.expires:
        raise PublishError(f"manifest {manifest.name} v{manifest.version} is already expired")
    latest = latest_version_number(session, manifest.name)
    if manifest.version <= latest:
        raise PublishError(f"{manifest.name} v{manifest.version} is not newer than the published v{latest}")
    for what, sha, size in [("artifact", manifest.sha256, manifest.size)] + [
        (f"{enc} transfer", t.sha256, t.size) for enc, t in manifest.transfers.items()
    ]:
        if not blobs.has(sha) or blobs.path(sha).stat().st_size != size:
            raise PublishError(f"the {what} blob {sha[:16]}... ({size} bytes) has not been uploaded")
        record_blob(session, sha, size)
    model = session.scalars(select(Model).where(Model.name == manifest.name)).first()
    if model is None:
        model = Model(name=manifest.name)
        session.add(model)
        session.flush()
    version = ModelVersion(
        model_id=model.id, version=manifest.version, sha256=manifest.sha256, size=manifest.size,
        architecture=manifest.architecture, quantization=manifest.quantization,
        created_at=manifest.created, expires_at=manifest.expires, envelope=canonical_json(env).decode(),
    )
    session.add(version)
    session.flush()
    return version


def get_version(session: Session, name: str, version: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).join(Model).where(Model.name == name, ModelVersion.version == version)
    ).first()


def blob_is_published(session: Session, sha256: str) -> bool:
    """A blob devices may fetch: an artifact or a transfer encoding of some published version."""
    return session.get(Blob, sha256) is not None
