"""Enrol a device from tests/fleet without importing the agent test kit."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgegen.agent.agent import Agent, AgentConfig


def enroll_device(url: str, token: str) -> str:
    agent = Agent(AgentConfig(data_dir=Path(tempfile.mkdtemp(prefix="edgegen-dev-")), server=url))
    try:
        return agent.enroll(token)
    finally:
        agent.close()
