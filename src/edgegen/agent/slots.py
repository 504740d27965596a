"""Two slots (A/B), each a complete runnable set, and the one pointer that says which is active.

    <data>/slots/a/model.gguf, <data>/slots/a/manifest.json    (same for b)
    <data>/slots/a/adapter.gguf, base.json   when the slot's manifest is a LoRA adapter: the adapter,
                                             and the base model's own signed manifest; model.gguf
                                             is then the base (a hard link to the installed one)
    <data>/slots/a/model.onnx/               when the slot's manifest has format ``onnx``: the ONNX
                                             Runtime GenAI folder, unpacked from the signed canonical
                                             tar (``formats.folder_pack``); re-packing it gives the
                                             signed bytes back, which is how it is verified
    <data>/active.json    {"slot", "name", "version", "sha256"}: THE commit point of an update

    slots.install(slot, source, encoding, manifest, envelope, delta_base=, base_model=, base_envelope=)
        decode the downloaded transfer into the inactive slot (zstd, or a zstd-patch delta against
        ``delta_base``, the active slot's file; bounded by the manifest size), verify size and sha256
        of the *result*, fsync, rename into place; for an adapter, link the base model in; write the
        slot's manifest last: a slot with a manifest is complete
    slots.switch(slot, manifest)    atomic replace of active.json (old or new, never neither)
    slots.verify(slot)              the slot's files hash to what its manifest says (an adapter's
                                    base to the manifest's ``base_sha256``)

    slots.open_runnable(slot)       (model, adapter) paths to load, valid inside the ``with`` block

With a device key (``Slots(dir, key=...)``), model and adapter files are sealed at rest
(``edgegen.sealed``: AES-GCM, streamed): written sealed as they are decoded, hashed in plaintext on
the way, opened for loading as memory files that never touch the disk (ONNX folders are refused
under a device key: ONNX Runtime loads a folder from the file system). Installing into the active
slot is refused: whatever happens mid-install, the running model's files are untouched. This
module does not download, verify signatures or load models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgegen.agent.download import sha256_file
from edgegen.agent.trust import check_artifact
from edgegen.delta import ENCODING, apply_delta
from edgegen.durable import atomic_write, commit_file, crashpoint, fsync_dir
from edgegen.errors import FleetError, HashMismatchError, OversizeError, UnsupportedArtifactError
from edgegen.fleet.signing import Manifest, load_envelope
from edgegen.formats.folder_pack import packed_bytes, packed_sha256, unpack
from edgegen.sealed import SealedDataError, SealedWriter, is_sealed, plain_copy, read_plain, sha256_plain

SLOT_NAMES = ("a", "b")
CHUNK = 256 * 1024
MAX_ZSTD_WINDOW = 1 << 27  # bounds decoder memory whatever the stream claims


@dataclass(frozen=True)
class ActiveRecord:
    slot: str
    name: str
    version: int
    sha256: str


class _PlainWriter:
    """A file opened for writing that hashes what goes through it (the unsealed twin of SealedWriter)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        self._f.close()


class Slots:
    def __init__(self, data_dir: Path, key: bytes | None = None) -> None:
        """``key``: the device's at-rest key (None: files stored in the clear)."""
        self.data_dir = Path(data_dir)
        self.pointer = self.data_dir / "active.json"
        self.key = key

    # ---- sealed or plain files ------------------------------------------------------------------

    def _writer(self, path: Path) -> SealedWriter | _PlainWriter:
        return SealedWriter(path, self.key) if self.key is not None else _PlainWriter(path)

    def file_sha256(self, path: Path) -> tuple[str, int]:
        """(sha256, size) of a stored file's plaintext; of a folder's canonical tar."""
        if Path(path).is_dir():
            return packed_sha256(path)
        if is_sealed(path):
            if self.key is None:
                raise SealedDataError(f"{path} is sealed and this agent has no device key")
            return sha256_plain(path, self.key)
        return sha256_file(path)

    def read_file(self, path: Path) -> bytes:
        """A stored file's plaintext; a folder's canonical tar (the base of a delta)."""
        if Path(path).is_dir():
            return packed_bytes(path)
        if is_sealed(path):
            if self.key is None:
                raise SealedDataError(f"{path} is sealed and this agent has no device key")
            return read_plain(path, self.key)
        return Path(path).read_bytes()

    @contextlib.contextmanager
    def open_plain(self, path: Path) -> Iterator[Path]:
        """A path an engine can load: ``path`` itself (a plain file, or an unpacked ONNX folder), or a
        memory-file copy of a sealed file (closed after)."""
        if not path.is_file() or not is_sealed(path):
            yield path
            return
        if self.key is None:
            raise SealedDataError(f"{path} is sealed and this agent has no device key")
        with plain_copy(path, self.key, path.name) as copy:
            yield copy.path

    @contextlib.contextmanager
    def open_runnable(self, slot: str) -> Iterator[tuple[Path, Path | None]]:
        """(model, adapter or None) for llama.cpp; sealed files as memory-file copies, closed after."""
        model, adapter = self.runnable(slot)
        with contextlib.ExitStack() as stack:
            yield (stack.enter_context(self.open_plain(model)),
                   None if adapter is None else stack.enter_context(self.open_plain(adapter)))

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

    def adapter_path(self, slot: str) -> Path:
        return self.dir(slot) / "adapter.gguf"

    def base_envelope_path(self, slot: str) -> Path:
        return self.dir(slot) / "base.json"

    def folder_path(self, slot: str) -> Path:
        return self.dir(slot) / "model.onnx"

    def artifact_path(self, slot: str, manifest: Manifest) -> Path:
        """What ``manifest`` describes: the adapter for an adapter, the folder of an ONNX model, else
        the model file."""
        if manifest.is_adapter:
            return self.adapter_path(slot)
        return self.folder_path(slot) if manifest.format == "onnx" else self.model_path(slot)

    def runnable(self, slot: str) -> tuple[Path, Path | None]:
        """(model file or folder, adapter or None) to load for ``slot``."""
        m = self.slot_manifest(slot)
        if m is not None and not m.is_adapter and m.format == "onnx":
            return self.folder_path(slot), None
        return self.model_path(slot), (self.adapter_path(slot) if m is not None and m.is_adapter else None)

    def base_of(self, slot: str) -> tuple[str, Path, bytes] | None:
        """(sha256, file, signed manifest) of the base model installed in ``slot``, if it has one."""
        m = self.slot_manifest(slot)
        if m is None:
            return None
        if not m.is_adapter:
            return m.sha256, self.model_path(slot), self.read_manifest(slot) or b""
        try:
            env = self.base_envelope_path(slot).read_bytes()
        except FileNotFoundError:
            env = b""
        assert m.base_sha256 is not None
        return m.base_sha256, self.model_path(slot), env

    def slot_manifest(self, slot: str) -> Manifest | None:
        data = self.read_manifest(slot)
        return None if data is None else Manifest.from_signed(load_envelope(data, "manifest")["signed"])

    def verify(self, slot: str) -> Manifest | None:
        """The slot's manifest if its files are complete and hash right, else None."""
        manifest = self.slot_manifest(slot)
        if manifest is None:
            return None
        path = self.artifact_path(slot, manifest)
        try:
            if not path.exists() or self.file_sha256(path) != (manifest.sha256, manifest.size):
                return None
            if manifest.is_adapter:
                base = self.model_path(slot)
                if not base.exists() or self.file_sha256(base)[0] != manifest.base_sha256:
                    return None
        except SealedDataError:  # altered, truncated, or sealed under another key
            return None
        return manifest

    def check_installable(self, manifest: Manifest) -> None:
        """``UnsupportedArtifactError`` for what these slots cannot hold: an ONNX folder under a device
        key (ONNX Runtime loads a folder from the file system, so it cannot stay sealed)."""
        if not manifest.is_adapter and manifest.format == "onnx" and self.key is not None:
            raise UnsupportedArtifactError(
                "an ONNX model folder cannot be sealed at rest (ONNX Runtime loads it from the file "
                "system): publish a GGUF for devices with a device key")

    def install(self, slot: str, source: Path, encoding: str | None, manifest: Manifest, envelope: bytes, *,
                delta_base: Path | None = None, base_model: Path | None = None,
                base_envelope: bytes | None = None) -> None:
        """``delta_base``: the installed file a ``zstd-patch`` delta applies to; ``base_model`` and
        ``base_envelope``: for an adapter, the installed base model (already checked against the
        manifest's ``base_sha256`` by the caller, re-checked by ``verify``) and its manifest."""
        if manifest.is_adapter and base_model is None:
            raise FleetError("an adapter needs its installed base model")
        self.check_installable(manifest)
        folder = not manifest.is_adapter and manifest.format == "onnx"
        act = self.active()
        if act is not None and act.slot == slot:
            raise FleetError(f"refusing to install into the active slot {slot}")
        d = self.dir(slot)
        d.mkdir(parents=True, exist_ok=True)
        self.manifest_path(slot).unlink(missing_ok=True)  # from here on the slot is incomplete
        fsync_dir(d)
        target = self.artifact_path(slot, manifest)
        tmp = target.with_name(target.name + (".tar.tmp" if folder else ".tmp"))
        out = self._writer(tmp)
        try:
            if encoding == ENCODING:
                if delta_base is None:
                    raise FleetError("a delta needs the installed base file")
                apply_delta(self.read_file(delta_base), source, out, manifest.size)  # type: ignore[arg-type]
            else:
                _decode(source, encoding, out, manifest.size)
            out.close()
            check_artifact(manifest, out.sha256, out.size)  # the plaintext, hashed on the way in
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        crashpoint("install.before_replace")
        if folder:
            self._unpack(tmp, target, manifest)
        else:
            commit_file(tmp, target)
        if manifest.is_adapter:
            assert base_model is not None
            self._link_base(slot, base_model)
            atomic_write(self.base_envelope_path(slot), base_envelope or b"", label="slot_manifest")
        else:
            for stale in (self.adapter_path(slot), self.base_envelope_path(slot)):
                stale.unlink(missing_ok=True)
            if not folder:
                shutil.rmtree(self.folder_path(slot), ignore_errors=True)
        crashpoint("install.before_manifest")
        atomic_write(self.manifest_path(slot), envelope, label="slot_manifest")

    def _unpack(self, tar: Path, target: Path, manifest: Manifest) -> None:
        """The verified canonical tar ``tar`` into the folder ``target`` (replacing an old one), checked
        by re-packing: the folder must give back exactly the signed bytes. The tar is removed."""
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            unpack(tar, staging, limit=manifest.size)
            if packed_sha256(staging) != (manifest.sha256, manifest.size):
                raise HashMismatchError("the unpacked folder does not re-pack to the signed bytes "
                                        "(not a canonical tar)")
            fsync_dir(staging)
            crashpoint("install.unpacked")
            shutil.rmtree(target, ignore_errors=True)  # the slot has no manifest: nothing runs from it
            os.replace(staging, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            tar.unlink(missing_ok=True)

    def _link_base(self, slot: str, base_model: Path) -> None:
        """The base model into ``slot`` as a hard link (no second copy on disk; files are only ever
        replaced by rename, never written in place, so the slots cannot disturb each other)."""
        dest = self.model_path(slot)
        if dest.exists() and os.path.samefile(dest, base_model):
            return
        tmp = dest.with_name("model.gguf.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(base_model, tmp)
        except OSError:  # a file system without hard links: copy
            shutil.copyfile(base_model, tmp)
        commit_file(tmp, dest)

    def switch(self, slot: str, manifest: Manifest) -> ActiveRecord:
        record = ActiveRecord(slot, manifest.name, manifest.version, manifest.sha256)
        crashpoint("switch.before_pointer")
        atomic_write(self.pointer, json.dumps(record.__dict__, sort_keys=True).encode(), label="pointer")
        return record


def _decode(source: Path, encoding: str | None, out: SealedWriter | _PlainWriter, size: int) -> None:
    """Write the decoded artifact to ``out``; more than ``size`` bytes is a refusal (a bomb)."""
    with open(source, "rb") as fin:
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
                out.write(chunk)
                crashpoint("install.chunk")
        except (OversizeError, OSError):
            raise
        except Exception as exc:  # zstandard.ZstdError on a corrupt stream
            raise HashMismatchError(f"the transfer does not decode: {exc}") from exc
