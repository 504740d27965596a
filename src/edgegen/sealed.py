"""Encryption at rest on the device: AES-256-GCM with a per-device key, streamed in chunks.

    DeviceKey.load_or_create(path)   the 32-byte key in a 0600 file that lives OUTSIDE the data
                                     directory (a stolen data dir without it reveals nothing)
    SealedWriter(path, key)          a write-only file object: plaintext in, sealed file out, and the
                                     plaintext's sha256 and size counted on the way (no second pass)
    open_plain(path, key)            iterate over the plaintext chunks of a sealed file, authenticated
    read_plain(path, key) / sha256_plain(path, key)
    plain_copy(path, key)            the plaintext in an anonymous memory file (``memfd_create``):
                                     a ``/proc/self/fd/N`` path llama.cpp can open and mmap, never
                                     written to disk; close the returned handle once loaded
    RowCipher(key)                   seal/open small values (the telemetry spool's event bodies)
    seal_value(key, data, label) / open_value(key, blob, label) / is_sealed_value(blob)
                                     a small sealed file body (the agent's credential): ``EGSEALV1 ``
                                     + a RowCipher value, with ``label`` as associated data, so a
                                     value sealed for one purpose does not open as another
    key_passphrase(key, label)       a passphrase derived from the device key (HKDF-SHA256), for
                                     files another library encrypts (the TLS private key's PKCS#8)

File format (a chunked AEAD in the manner of age's STREAM construction): the header ``EGSEAL1`` +
a random 7-byte nonce prefix, then chunks of up to 1 MiB of plaintext, each sealed with AES-GCM
under nonce = prefix || chunk index (4 bytes) || final flag (1 byte), with the header as associated
data. Reordered, truncated, extended or altered files fail to open (``SealedDataError``), and a
file sealed under another key is refused. Memory stays at one chunk whatever the file size.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgegen.errors import SealedDataError, UserInputError

__all__ = ["CHUNK", "DeviceKey", "RowCipher", "SealedDataError", "SealedWriter", "is_sealed", "is_sealed_value",
           "key_passphrase", "open_plain", "open_value", "plain_copy", "read_plain", "seal_value", "sha256_plain"]

MAGIC = b"EGSEAL1"
PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + PREFIX_BYTES
CHUNK = 1 << 20
TAG = 16


class DeviceKey:
    @staticmethod
    def load_or_create(path: Path) -> bytes:
        path = Path(path)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
        if len(key) != 32:
            raise UserInputError(f"{path} is not a 32-byte device key")
        return key


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


class SealedWriter:
    """Write-only file object producing a sealed file; ``sha256``/``size`` are the plaintext's."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(PREFIX_BYTES)
        self._header = MAGIC + self._prefix
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._header)
        self._buf = bytearray()
        self._index = 0
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte back: the last chunk is marked final
            self._seal(bytes(self._buf[:CHUNK]), final=False)
            del self._buf[:CHUNK]
        return len(data)

    def _seal(self, chunk: bytes, final: bool) -> None:
        self._f.write(self._aead.encrypt(_nonce(self._prefix, self._index, final), chunk, self._header))
        self._index += 1

    def close(self) -> None:
        if not self._f.closed:
            self._seal(bytes(self._buf), final=True)
            self._buf.clear()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_sealed(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except FileNotFoundError:
        return False


def open_plain(path: Path, key: bytes) -> Iterator[bytes]:
    aead = AESGCM(key)
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
        if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
            raise SealedDataError(f"{path} is not a sealed file")
        prefix = header[len(MAGIC):]
        index = 0
        block = f.read(CHUNK + TAG)
        while True:
            nxt = f.read(CHUNK + TAG)
            final = not nxt
            try:
                yield aead.decrypt(_nonce(prefix, index, final), block, header)
            except InvalidTag as exc:
                raise SealedDataError(f"{path}: chunk {index} does not authenticate (wrong device key, or "
                                      "the file was altered or truncated)") from exc
            if final:
                return
            block, index = nxt, index + 1


def read_plain(path: Path, key: bytes) -> bytes:
    return b"".join(open_plain(path, key))


def sha256_plain(path: Path, key: bytes) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for chunk in open_plain(path, key):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


class PlainCopy:
    """The plaintext of a sealed file in an anonymous memory file; ``path`` is valid until ``close``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.path = Path(f"/proc/self/fd/{fd}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PlainCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plain_copy(path: Path, key: bytes, name: str = "edgegen-model") -> PlainCopy:
    fd = os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
    try:
        for chunk in open_plain(path, key):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return PlainCopy(fd)


class RowCipher:
    """AES-GCM for small values: ``seal(text, aad) -> str`` (base64 of nonce + ciphertext)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, text: str, aad: bytes = b"") -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, text.encode("utf-8"), aad)).decode("ascii")

    def open(self, sealed: str, aad: bytes = b"") -> str:
        try:
            raw = base64.b64decode(sealed)
            return self._aead.decrypt(raw[:12], raw[12:], aad).decode("utf-8")
        except (InvalidTag, ValueError) as exc:
            raise SealedDataError("a sealed value does not open (wrong device key or altered)") from exc


VALUE_MAGIC = b"EGSEALV1 "


def seal_value(key: bytes, data: bytes, label: str) -> bytes:
    """``data`` (a few KB at most) sealed under the device key, bound to ``label``."""
    return VALUE_MAGIC + RowCipher(key).seal(base64.b64encode(data).decode("ascii"), label.encode()).encode()


def is_sealed_value(blob: bytes) -> bool:
    return blob.startswith(VALUE_MAGIC)


def open_value(key: bytes, blob: bytes, label: str) -> bytes:
    """The plaintext of ``seal_value``'s output; ``SealedDataError`` for another key, label or an altered blob."""
    if not is_sealed_value(blob):
        raise SealedDataError("not a sealed value")
    return base64.b64decode(RowCipher(key).open(blob[len(VALUE_MAGIC):].decode("ascii"), label.encode()))


def key_passphrase(key: bytes, label: str) -> bytes:
    """A 32-byte passphrase (hex) for ``label`` derived from the device key with HKDF-SHA256 (RFC 5869)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode()).derive(key).hex().encode()
