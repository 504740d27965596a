"""Bounded, resumable downloads of one blob into a ``.part`` file.

    download(client, url, part, size=, sha256=)   resume from the part file's length with
                                                  ``Range: bytes=N-``; never write past ``size``
                                                  (an endless or oversize body is cut off and
                                                  refused); verify sha256 over the whole file

The bytes counted and hashed are the bytes on the wire (``iter_raw``): a server that adds a
``Content-Encoding`` cannot inflate past the cap. Zstandard decompression of the transfer happens
at install time (``slots.py``), not here. Returns nothing; raises ``TrustError`` subclasses on
refusal (the part file is deleted so the next attempt starts clean) and ``FleetError`` on network
trouble (the part file is kept so the next attempt resumes).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from edgegen.agent.trust import check_received
from edgegen.durable import crashpoint
from edgegen.errors import AuthError, FleetError, OversizeError, TrustError

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _start_offset(r: httpx.Response, offset: int) -> int:
    """Where the body starts: ``offset`` for a matching 206, 0 for a full 200 (Range ignored)."""
    if r.status_code == 200:
        return 0
    m = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", ""))
    if r.status_code != 206 or m is None or int(m.group(1)) != offset:
        raise FleetError(f"server answered a range request from {offset} with {r.status_code} "
                         f"{r.headers.get('content-range', '')!r}")
    return offset


def download(
    client: httpx.Client,
    url: str,
    part: Path,
    *,
    size: int,
    sha256: str,
    what: str = "download",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:  # cannot be ours: start again
        part.unlink()
        offset = 0
    if offset < size:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with client.stream("GET", url, headers=headers) as r:
                if r.status_code in (401, 403):
                    r.read()
                    raise AuthError(f"control plane refused the download ({r.status_code}): {r.text[:200]}")
                if r.status_code == 416 and offset:
                    part.unlink()
                    raise FleetError("server refused to resume; restarting the download")
                if r.status_code not in (200, 206):
                    raise FleetError(f"download of {url} failed with HTTP {r.status_code}")
                offset = _start_offset(r, offset)
                with open(part, "r+b" if part.exists() else "wb") as f:
                    f.seek(offset)
                    f.truncate()
                    written = offset
                    for chunk in r.iter_raw():  # as received: nothing buffered is lost on a drop
                        if written + len(chunk) > size:
                            f.write(chunk[: size - written])
                            f.close()
                            part.unlink()
                            raise OversizeError(
                                f"{what}: the server sent more than the {size} bytes the manifest allows"
                            )
                        f.write(chunk)
                        written += len(chunk)
                        f.flush()
                        if progress is not None:
                            progress(written, size)
                        crashpoint("download.chunk")
                    f.flush()
                    os.fsync(f.fileno())
        except httpx.HTTPError as exc:
            raise FleetError(f"download of {url} interrupted at byte {part.stat().st_size if part.exists() else 0}: "
                             f"{exc}") from exc
    got_sha, got_size = sha256_file(part)
    if got_size < size:  # the connection ended early: keep the part, the next attempt resumes
        raise FleetError(f"{what}: connection closed after {got_size} of {size} bytes")
    try:
        check_received(what, sha256, size, got_sha, got_size)
    except TrustError:
        part.unlink(missing_ok=True)
        raise
