"""Fixtures for the server tests: one shared SmolLM2 "device" server (chat template, real sampling)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import running


@pytest.fixture(scope="session")
def smol_server(smollm2_q4_1: Path) -> Iterator[BackgroundServer]:
    """SmolLM2 Q4_1, 512-token context, key ``KEY``, default queue of 8."""
    with running(smollm2_q4_1, n_ctx=512, model_id="smollm2") as srv:
        yield srv


@pytest.fixture(scope="session")
def stories_server(stories_gguf: Path) -> Iterator[BackgroundServer]:
    """stories260K (2,000 tokens/s here): for tests that send many requests."""
    with running(stories_gguf, n_ctx=256, model_id="stories") as srv:
        yield srv
