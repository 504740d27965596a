"""Deltas the control plane serves: from a version a device has installed to the one it should run.

    DeltaService(blobs, level)
        .prepare(session, target) -> [{"base_sha256", "sha256" | None, "size", "full"}]
            at publish time: make the deltas to ``target`` from the versions devices run now (the
            ``active_sha256`` devices following the model report, most common first, and the
            previous version, which devices serving the model as an extra adapter stream run),
            at most ``max_bases`` of them
        .offer(session, target, base_sha256)
            -> ``{"encoding": "zstd-patch", "base_sha256", "sha256", "size"}`` or None
            a device's request: a delta made before, or None at once (take the full transfer);
            a pair nobody prepared is queued for the background worker, for the devices after it
        .join()   wait until the background worker is idle (tests, shutdown)

The base must be the artifact of a published version of the same model (a device names what it
runs by sha256; nothing else is diffed). A delta is made once per (base, target) pair with
``edgegen.delta.make_delta``, stored in the blob store (so the ordinary blob route serves it, with
Range resume) and recorded; the decision is cached on disk, including "no delta": when the delta
is not smaller than the smallest full transfer of the target, the device is told to take the full
transfer. No device request waits for a delta to be made (8 to 9 s per 100 MB at level 9).
Deltas are not signed: the device checks the *reconstructed* file against the sha256 in the
target's signed manifest, so a wrong or hostile delta can cost bandwidth, never integrity.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgegen.delta import ENCODING, make_delta
from edgegen.durable import atomic_write, commit_file
from edgegen.fleet.db import Device, Model, ModelVersion
from edgegen.fleet.publish import sha256_file
from edgegen.fleet.registry import BlobStore, record_blob
from edgegen.fleet.signing import Manifest

log = logging.getLogger(__name__)


class DeltaService:
    def __init__(self, blobs: BlobStore, level: int = 9, max_bases: int = 8) -> None:
        self.blobs = blobs
        self.level = level
        self.max_bases = max_bases  # bases prepared per publish (each costs ~1 s per 10 MB)
        self.dir = blobs.root / "deltas"
        self.built = 0  # deltas made by this process (publish time and background)
        self._lock = threading.Lock()  # one delta is made at a time (CPU and RAM bound)
        self._jobs: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._worker: threading.Thread | None = None

    # ---- publish time ----------------------------------------------------------------------------

    def bases_for(self, session: Session, target: ModelVersion) -> list[str]:
        """sha256 of the published versions of ``target``'s model that devices run: the previous
        version first, then what devices following the model report, most devices first."""
        versions = {v.sha256: v.version for v in session.scalars(
            select(ModelVersion).where(ModelVersion.model_id == target.model_id))}
        running = Counter(session.scalars(select(Device.active_sha256).join(Model, Model.name == Device.model_name)
                                          .where(Model.id == target.model_id, Device.revoked_at.is_(None),
                                                 Device.active_sha256.is_not(None))))
        older = sorted((v, sha) for sha, v in versions.items() if v < target.version)
        ordered = ([older[-1][1]] if older else []) + [sha for sha, _ in running.most_common()]
        out = [sha for sha in dict.fromkeys(ordered) if sha in versions and sha != target.sha256]
        return out[: self.max_bases]

    def prepare(self, session: Session, target: ModelVersion) -> list[dict[str, Any]]:
        """Make now (the publish request waits) the deltas devices will ask for; caller commits."""
        out = []
        for base in self.bases_for(session, target):
            with self._lock:
                record = self._cached(base, target.sha256) or self._make(base, target.sha256, target.envelope)
            if record.get("sha256") is not None:
                record_blob(session, record["sha256"], record["size"])
            out.append({"base_sha256": base, **record})
        return out

    # ---- a device's request ------------------------------------------------------------------------

    def offer(self, session: Session, target: ModelVersion, base_sha256: str) -> dict[str, Any] | None:
        base = session.scalars(select(ModelVersion).join(Model).where(
            Model.id == target.model_id, ModelVersion.sha256 == base_sha256)).first()
        if base is None or base.sha256 == target.sha256:
            return None
        record = self._cached(base.sha256, target.sha256)
        if record is None:  # never made here: the full transfer now, a delta for the devices after
            self._enqueue(base.sha256, target.sha256, target.envelope)
            return None
        if record.get("sha256") is None:
            return None
        record_blob(session, record["sha256"], record["size"])
        session.commit()
        return {"encoding": ENCODING, "base_sha256": base.sha256, "sha256": record["sha256"], "size": record["size"]}

    def _enqueue(self, base: str, target: str, envelope: str) -> None:
        with self._lock:
            if (base, target) in self._queued:
                return
            self._queued.add((base, target))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="delta-builder", daemon=True)
                self._worker.start()
        self._jobs.put((base, target, envelope))

    def _work(self) -> None:
        while True:
            base, target, envelope = self._jobs.get()
            try:
                with self._lock:
                    if self._cached(base, target) is None:
                        self._make(base, target, envelope)
            except Exception:  # a failed build leaves devices on the full transfer
                log.exception("delta %s.. -> %s.. failed", base[:12], target[:12])
            finally:
                with self._lock:
                    self._queued.discard((base, target))
                self._jobs.task_done()

    def join(self) -> None:
        self._jobs.join()

    # ---- the store ---------------------------------------------------------------------------------

    def _key(self, base: str, target: str) -> Path:
        return self.dir / f"{base}-{target}.json"

    def _cached(self, base: str, target: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._key(base, target).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if record.get("sha256") is not None and not self.blobs.has(record["sha256"]):
            return None
        return dict(record)

    def _make(self, base: str, target_sha: str, envelope: str) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{base}-{target_sha}.tmp"
        size = make_delta(self.blobs.path(base), self.blobs.path(target_sha), tmp, self.level)
        self.built += 1
        manifest = Manifest.from_signed(json.loads(envelope)["signed"])
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
        atomic_write(self._key(base, target_sha), json.dumps(record).encode(), label="delta_record")
        log.info("delta %s.. -> %s..: %d bytes (full transfer %d)%s", base[:12], target_sha[:12], size, full,
                 "" if record["sha256"] else ": not smaller, full transfer instead")
        return record
