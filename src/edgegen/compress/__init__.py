"""Compression: calibrated mixed-precision quantization of causal LMs to GGUF.

    blocks/      GGUF block formats written by our own code, byte-exact to ggml-common.h
    forward      a Llama-family forward pass in torch over GGUF tensors (for calibration)
    calibrate    per-weight input Hessians and output Fisher diagonals from a calibration text
    rounding     importance-weighted fits + GPTQ error feedback inside each block format
    mixed        per-tensor sensitivity per type, and type allocation under size/speed budgets
    speed        the per-format decode cost model the allocator uses
    plan         the pipeline's steps that touch the source model
    gguf_out     the atomic quantized-GGUF writer
    pipeline     ``compress(src, out, budget=..., calib=... | calib_text=..., progress=...)``
    report       ``CompressReport`` (per-tensor types, sizes, predicted/measured error)

The public entry point is ``compress``; nothing here prints or exits. Names are imported lazily
so that ``edgegen.compress.blocks`` works without torch (only calibration and GPTQ need it).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["compress", "Budget", "CompressConfig", "CompressReport", "TensorReport", "PRESETS"]
_HOME = {"compress": "pipeline", "Budget": "pipeline", "CompressConfig": "pipeline", "PRESETS": "pipeline",
         "CompressReport": "report", "TensorReport": "report"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"edgegen.compress.{_HOME[name]}"), name)
    raise AttributeError(name)
