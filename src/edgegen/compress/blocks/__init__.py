"""GGUF block formats written by our own code, byte-exact to ggml-common.h.

``REGISTRY`` maps each ``gguf.GGMLQuantizationType`` we can write to its ``QuantType``:
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL (32-wide) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256-wide).
``FLOATS`` holds the F32/F16 fallbacks. ``storage_type(t)`` returns either kind.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType

from edgegen.compress.blocks import kquants, legacy  # noqa: F401  (importing registers the formats)
from edgegen.compress.blocks._base import REGISTRY, Grid, QuantType
from edgegen.compress.blocks.floats import F16, F32, FLOATS, FloatType

__all__ = ["REGISTRY", "FLOATS", "F16", "F32", "Grid", "QuantType", "FloatType", "storage_type"]


def storage_type(t: GGMLQuantizationType | str) -> QuantType | FloatType:
    """The writer for a ggml type given as enum or name (``"Q4_K"``); KeyError if we have none."""
    if isinstance(t, str):
        t = GGMLQuantizationType[t.upper()]
    if t in REGISTRY:
        return REGISTRY[t]
    return FLOATS[t]
