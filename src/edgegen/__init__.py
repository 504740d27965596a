"""edgegen: generative AI on edge devices.

Public API (everything else is internal):
    Engine, SamplingParams, Completion   the llama.cpp runtime
    Settings, get_settings               configuration
    errors                               the error hierarchy
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgegen.config import Settings, get_settings
from edgegen.errors import EdgegenError

__all__ = ["Engine", "SamplingParams", "Completion", "Settings", "get_settings", "EdgegenError", "__version__"]


def __getattr__(name: str):  # lazy: importing edgegen must not load llama.cpp
    if name in ("Engine", "SamplingParams", "Completion"):
        from edgegen.runtime import engine

        return getattr(engine, name)
    raise AttributeError(name)
