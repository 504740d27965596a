"""Two model slots (A/B) and the one pointer that says which is active.

    <data>/slots/a/model.gguf, <data>/slots/a/manifest.json    (same for b)
    <data>/active.json    {"slot", "name", "version", "sha256"}: THE commit point of an update

    slots.install(slot, source, encoding, manifest, envelope)   decode the downloaded transfer into
        the inactive slot (zstd, bounded by the manifest size), verify size and sha256, fsync,
        rename into place, then write the slot's manifest last: a slot with a manifest is complete
    slots.switch(slot, manifest)    atomic replace of active.json (old or new, never neither)
    slots.verify(slot)              the slot's model file hashes to what its manifest says

Installing into the active slot is refused: whatever happens mid-install, the running model's
files are untouched. This module does not download, verify signatures or load models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgegen.agent.download import sha256_file
from edgegen.agent.journal import atomic_write, crashpoint, fsync_dir
from edgegen.agent.trust import check_artifact
from edgegen.errors import FleetError, OversizeError
from edgegen.fleet.signing import Manifest, load_envelope

SLOT_NAMES = ("a", "b")
CHUNK = 256 * 1024
MAX_ZSTD_WINDOW = 1 << 27  # bounds decoder memory whatever the stream claims


@dataclass(frozen=True)
class ActiveRecord:
    slot: str
    name: str
    version: int
    sha256: str


class Slots:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.pointer = self.data_dir / "active.json"

    def dir(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise FleetError(f"no slot {slot!r}")
        return self.data_dir / "slots" / slot

    def model_path(self, slot: str) -> Path:
        return self.dir(slot) / "model.gguf"

    def manifest_path(self, slot: str) -> Path:
        return self.dir(slot) / "manifest.json"

    def active(self) -> ActiveRecord | None:
        try:
            d = json.loads(self.pointer.read_bytes())
        except FileNotFoundError:
            return None
        return ActiveRecord(d["slot"], d["name"], int(d["version"]), d["sha256"])

    def inactive(self) -> str:
        act = self.active()
        return "b" if act is not None and act.slot == "a" else "a"

    def read_manifest(self, slot: str) -> bytes | None:
        try:
            return self.manifest_path(slot).read_bytes()
        except FileNotFoundError:
            return None

    def slot_manifest(self, slot: str) -> Manifest | None:
        data = self.read_manifest(slot)
        return None if data is None else Manifest.from_signed(load_envelope(data, "manifest")["signed"])

    def verify(self, slot: str) -> Manifest | None:
        """The slot's manifest if its model file is complete and hashes right, else None."""
        manifest = self.slot_manifest(slot)
        path = self.model_path(slot)
        if manifest is None or not path.exists():
            return None
        sha, size = sha256_file(path)
        return manifest if (sha, size) == (manifest.sha256, manifest.size) else None

    def install(self, slot: str, source: Path, encoding: str | None, manifest: Manifest, envelope: bytes) -> None:
        act = self.active()
        if act is not None and act.slot == slot:
            raise FleetError(f"refusing to install into the active slot {slot}")
        d = self.dir(slot)
        d.mkdir(parents=True, exist_ok=True)
        self.manifest_path(slot).unlink(missing_ok=True)  # from here on the slot is incomplete
        fsync_dir(d)
        tmp = d / "model.gguf.tmp"
        _decode(source, encoding, tmp, manifest.size)
        sha, size = sha256_file(tmp)
        try:
            check_artifact(manifest, sha, size)
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        crashpoint("install.before_replace")
        os.replace(tmp, self.model_path(slot))
        fsync_dir(d)
        crashpoint("install.before_manifest")
        atomic_write(self.manifest_path(slot), envelope, label="slot_manifest")

    def switch(self, slot: str, manifest: Manifest) -> ActiveRecord:
        record = ActiveRecord(slot, manifest.name, manifest.version, manifest.sha256)
        crashpoint("switch.before_pointer")
        atomic_write(self.pointer, json.dumps(record.__dict__, sort_keys=True).encode(), label="pointer")
        return record


def _decode(source: Path, encoding: str | None, dest: Path, size: int) -> None:
    """Write the decoded artifact to ``dest``; more than ``size`` bytes is a refusal (a bomb)."""
    with open(source, "rb") as fin, open(dest, "wb") as fout:
        if encoding is None:
            reader = fin
        elif encoding == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).stream_reader(fin)
        else:
            raise FleetError(f"unknown transfer encoding {encoding!r}")
        written = 0
        try:
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > size:
                    raise OversizeError(f"the transfer decodes to more than the {size} bytes the manifest allows")
                fout.write(chunk)
                crashpoint("install.chunk")
        except OversizeError:
            fout.close()
            dest.unlink(missing_ok=True)
            raise
        except Exception as exc:  # zstandard.ZstdError on a corrupt stream
            fout.close()
            dest.unlink(missing_ok=True)
            from edgegen.errors import HashMismatchError

            raise HashMismatchError(f"the transfer does not decode: {exc}") from exc
        fout.flush()
        os.fsync(fout.fileno())
