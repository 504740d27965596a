"""The canonical tar of a model folder: one sha256 for every file, the same bytes however the folder
was written, and an unpacker that refuses what a canonical tar never holds (attack-named tests)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from edgegen.errors import UnsafeArchiveError, UserInputError
from edgegen.formats.folder_pack import pack, packed_bytes, packed_sha256, unpack


def _folder(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    root.mkdir(parents=True)
    for rel in order or list(files):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[rel])
    return root


FILES = {"genai_config.json": b'{"model": {}}', "model.onnx": b"\x08\x07" * 700,
         "model.onnx.data": os.urandom(3000), "sub/tokenizer.json": b"{}"}


def test_same_files_same_bytes_whatever_order_times_and_modes(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", FILES)
    b = _folder(tmp_path / "b", FILES, order=list(reversed(FILES)))
    os.utime(b / "model.onnx", (1, 1))
    os.chmod(b / "model.onnx.data", 0o600)
    assert packed_bytes(a) == packed_bytes(b)
    assert packed_sha256(a) == packed_sha256(b)
    buf = io.BytesIO()
    assert pack(a, buf) == packed_sha256(a) and len(buf.getvalue()) == packed_sha256(a)[1]
    (b / "model.onnx").write_bytes(b"\x08\x07" * 699 + b"\x08\x08")  # one byte differs
    assert packed_sha256(a) != packed_sha256(b)


def test_unpack_then_repack_gives_the_signed_bytes_back(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", FILES)
    data = packed_bytes(src)
    names = unpack(io.BytesIO(data), tmp_path / "out", limit=len(data))
    assert sorted(names) == sorted(FILES)
    assert packed_bytes(tmp_path / "out") == data
    assert (tmp_path / "out" / "sub" / "tokenizer.json").read_bytes() == b"{}"
    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # a plain tar any tool reads
        assert sorted(t.getnames()) == sorted(FILES)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for info, body in members:
            info.size = len(body)
            t.addfile(info, io.BytesIO(body) if info.isreg() else None)
    buf.seek(0)
    return buf


def _reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    pytest.param((_reg("../escape.txt"), b"x"), id="path_traversal_attack"),
    pytest.param((_reg("/etc/evil"), b"x"), id="absolute_path_attack"),
    pytest.param((_reg("a/./../../b"), b"x"), id="dot_segments"),
    pytest.param((_link("model.onnx", "/etc/passwd"), b""), id="symlink_attack"),
    pytest.param((_link("model.onnx", "genai_config.json", tarfile.LNKTYPE), b""), id="hardlink_attack"),
])
def test_unsafe_members_are_refused_and_nothing_is_left(tmp_path: Path, member) -> None:  # noqa: ANN001
    with pytest.raises(UnsafeArchiveError):
        unpack(_tar([(_reg("ok.txt"), b"fine"), member]), tmp_path / "out", limit=1 << 20)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="twice"):
        unpack(_tar([(_reg("a"), b"1"), (_reg("a"), b"2")]), tmp_path / "out", limit=100)


def test_oversize_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="more than"):
        unpack(_tar([(_reg("a"), b"x" * 600), (_reg("b"), b"y" * 600)]), tmp_path / "out", limit=1000)
    assert not (tmp_path / "out").exists()


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError):
        unpack(io.BytesIO(b"GGUF" + b"\x01" * 1000), tmp_path / "out", limit=1 << 20)


def test_folders_with_links_or_nothing_cannot_be_packed(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no files"):
        packed_sha256(_folder(tmp_path / "empty", {}))
    f = _folder(tmp_path / "f", {"a": b"1"})
    (f / "b").symlink_to(f / "a")
    with pytest.raises(UserInputError, match="regular file"):
        packed_sha256(f)
