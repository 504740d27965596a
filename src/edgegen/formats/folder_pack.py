"""A model that is a folder (ONNX Runtime GenAI's genai_config.json + model.onnx + data + tokenizer
files) as one artifact: a canonical tar, so one sha256 and one signature cover every file.

    pack(folder, out)          write the canonical tar of ``folder``'s regular files -> (sha256, size)
    packed_sha256(folder)      (sha256, size) of that tar, computed without writing it
    packed_bytes(folder)       the tar itself, in memory (a delta's base)
    unpack(tar, dest, limit)   extract a canonical tar safely into the new folder ``dest``

Canonical means the tar is a pure function of the files' relative paths and bytes: members sorted by
path, ustar format, mode 0644, mtime/uid/gid 0, no owner names, no directory or link entries. So a
device can re-pack what it unpacked and get the signed bytes back: that is how it verifies an
installed folder (nothing on disk but the folder) and how it rebuilds the base of a delta update.
``unpack`` refuses anything a canonical tar does not hold: absolute paths, ``..``, links, devices,
duplicate names, more than ``limit`` bytes (``UnsafeArchiveError``). Files only; no compression here
(transfers compress the tar as they compress any artifact). Pure file I/O: no network, no signatures.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from edgegen.errors import UnsafeArchiveError, UserInputError

BLOCK = 512
CHUNK = 1 << 20


def _members(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, file) of every regular file under ``folder``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                raise UserInputError(f"{path} is not a regular file: a packed model holds regular files only")
            rel = path.relative_to(folder).as_posix()
            out.append((rel, path))
    if not out:
        raise UserInputError(f"{folder} holds no files")
    return sorted(out)


def _header(rel: str, size: int) -> bytes:
    info = tarfile.TarInfo(rel)
    info.size, info.mode, info.mtime, info.uid, info.gid = size, 0o644, 0, 0, 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    try:
        return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    except ValueError as exc:  # a name ustar cannot hold (over 255 bytes, or no split at a slash)
        raise UserInputError(f"{rel}: {exc}") from exc


def _stream(folder: Path) -> Iterator[bytes]:
    """The canonical tar's bytes, in chunks."""
    for rel, path in _members(folder):
        size = path.stat().st_size
        yield _header(rel, size)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (2 * BLOCK)  # end of archive (no padding to a 10 KiB record: nothing needs it)


def pack(folder: Path, out: IO[bytes]) -> tuple[str, int]:
    """Write the canonical tar of ``folder`` to ``out``; returns its (sha256, size)."""
    h, n = hashlib.sha256(), 0
    for chunk in _stream(folder):
        h.update(chunk)
        n += len(chunk)
        out.write(chunk)
    return h.hexdigest(), n


def packed_sha256(folder: Path) -> tuple[str, int]:
    """(sha256, size) of the canonical tar of ``folder``, nothing written."""
    h, n = hashlib.sha256(), 0
    for chunk in _stream(folder):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def packed_bytes(folder: Path) -> bytes:
    buf = io.BytesIO()
    pack(folder, buf)
    return buf.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise UnsafeArchiveError(f"archive member {name!r} is not a plain relative path")
    return p


def unpack(source: Path | IO[bytes], dest: Path, limit: int) -> list[str]:
    """Extract the canonical tar ``source`` into ``dest`` (which must not exist; it is created, and
    removed again on any failure); at most ``limit`` bytes of file contents. Returns the member paths.
    Raises ``UnsafeArchiveError`` for links, devices, unsafe or duplicate paths and oversize contents."""
    dest = Path(dest)
    if dest.exists():
        raise UserInputError(f"{dest} already exists")
    dest.mkdir(parents=True)
    names: list[str] = []
    total = 0
    try:
        f = open(source, "rb") if isinstance(source, (str, Path)) else source  # noqa: SIM115
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for m in tar:
                    if not m.isreg():
                        raise UnsafeArchiveError(f"archive member {m.name!r} is not a regular file")
                    rel = _safe_name(m.name)
                    if m.name in names:
                        raise UnsafeArchiveError(f"archive member {m.name!r} appears twice")
                    total += m.size
                    if total > limit:
                        raise UnsafeArchiveError(f"the archive holds more than the {limit} bytes allowed")
                    names.append(m.name)
                    target = dest.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    reader = tar.extractfile(m)
                    assert reader is not None  # a regular file always has contents
                    with open(target, "wb") as out:
                        shutil.copyfileobj(reader, out, CHUNK)
                        out.flush()
                        os.fsync(out.fileno())
        finally:
            if isinstance(source, (str, Path)):
                f.close()
    except tarfile.TarError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise UnsafeArchiveError(f"not a readable tar: {exc}") from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return names
