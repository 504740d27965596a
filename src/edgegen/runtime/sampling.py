"""Sampling defaults a chat user expects: the model's own generation settings, else llama.cpp's.

    model_defaults(metadata) -> (SamplingParams, {field: "model" | "llama.cpp"})

A GGUF may carry its author's settings under ``general.sampling.*`` (gguf-py's ``Keys.General.SAMPLING_*``:
temp, top_k, top_p, min_p, penalty_repeat). Where a key is absent the value is llama.cpp's own default
(``common/common.h``: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.0), which are
also ``SamplingParams``' defaults. Greedy decoding is never a default: callers ask for it
(``SamplingParams.greedy`` or temperature 0). Pure: takes the metadata dict, returns values.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgegen.runtime.engine import SamplingParams

# SamplingParams field -> GGUF key, with the type llama.cpp reads it as
GGUF_KEYS: dict[str, tuple[str, type]] = {
    "temperature": ("general.sampling.temp", float),
    "top_k": ("general.sampling.top_k", int),
    "top_p": ("general.sampling.top_p", float),
    "min_p": ("general.sampling.min_p", float),
    "repeat_penalty": ("general.sampling.penalty_repeat", float),
}


def model_defaults(metadata: dict[str, Any], base: SamplingParams = SamplingParams()) -> tuple[
        SamplingParams, dict[str, str]]:
    """``base`` with every setting the model declares (values that do not parse are ignored)."""
    params, source = base, {}
    for name, (key, kind) in GGUF_KEYS.items():
        raw = metadata.get(key)
        try:
            value = kind(float(raw)) if raw is not None else None
        except (TypeError, ValueError):
            value = None
        if value is None or value < 0:
            source[name] = "llama.cpp"
            continue
        params = replace(params, **{name: value})
        source[name] = "model"
    return params, source
