"""Deltas the control plane serves: from a version a device has installed to the one it should run.

    DeltaService(blobs, level).offer(session, target, base_sha256)
        -> ``{"encoding": "zstd-patch", "base_sha256", "sha256", "size"}`` or None

The base must be the artifact of a published version of the same model (a device names what it
runs by sha256; nothing else is diffed). A delta is made once per (base, target) pair with
``edgegen.delta.make_delta``, stored in the blob store (so the ordinary blob route serves it, with
Range resume) and recorded; the decision is cached on disk, including "no delta": when the delta
is not smaller than the smallest full transfer of the target, the device is told to take the full
transfer. Deltas are not signed: the device checks the *reconstructed* file against the sha256 in
the target's signed manifest, so a wrong or hostile delta can cost bandwidth, never integrity.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgegen.delta import ENCODING, make_delta
from edgegen.durable import atomic_write, commit_file
from edgegen.fleet.db import Model, ModelVersion
from edgegen.fleet.publish import sha256_file
from edgegen.fleet.registry import BlobStore, record_blob
from edgegen.fleet.signing import Manifest

log = logging.getLogger(__name__)


class DeltaService:
    def __init__(self, blobs: BlobStore, level: int = 9) -> None:
        self.blobs = blobs
        self.level = level
        self.dir = blobs.root / "deltas"
        self._lock = threading.Lock()  # one delta is made at a time (CPU and RAM bound)

    def offer(self, session: Session, target: ModelVersion, base_sha256: str) -> dict[str, Any] | None:
        base = session.scalars(select(ModelVersion).join(Model).where(
            Model.id == target.model_id, ModelVersion.sha256 == base_sha256)).first()
        if base is None or base.sha256 == target.sha256:
            return None
        with self._lock:
            record = self._cached(base.sha256, target.sha256)
            if record is None:
                record = self._make(base.sha256, target)
            if record.get("sha256") is None:
                return None
            record_blob(session, record["sha256"], record["size"])
            session.commit()
        return {"encoding": ENCODING, "base_sha256": base.sha256, "sha256": record["sha256"], "size": record["size"]}

    def _key(self, base: str, target: str) -> Path:
        return self.dir / f"{base}-{target}.json"

    def _cached(self, base: str, target: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._key(base, target).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if record.get("sha256") is not None and not self.blobs.has(record["sha256"]):
            return None
        return record

    def _make(self, base: str, target: ModelVersion) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{base}-{target.sha256}.tmp"
        size = make_delta(self.blobs.path(base), self.blobs.path(target.sha256), tmp, self.level)
        manifest = Manifest.from_signed(json.loads(target.envelope)["signed"])
        full = min([manifest.size, *(t.size for t in manifest.transfers.values())])
        record: dict[str, Any]
        if size >= full:
            tmp.unlink(missing_ok=True)
            record = {"sha256": None, "size": size, "full": full}
        else:
            sha, _ = sha256_file(tmp)
            (self.blobs.root / "sha256").mkdir(parents=True, exist_ok=True)
            commit_file(tmp, self.blobs.path(sha))
            record = {"sha256": sha, "size": size, "full": full}
        atomic_write(self._key(base, target.sha256), json.dumps(record).encode(), label="delta_record")
        log.info("delta %s.. -> %s..: %d bytes (full transfer %d)%s", base[:12], target.sha256[:12], size, full,
                 "" if record["sha256"] else ": not smaller, full transfer instead")
        return record
