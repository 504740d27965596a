"""Plain float storage (F32, F16): the fallback for tensors no block format can hold.

They share the facts ``QuantType`` exposes to the allocator (name, bits per weight, row bytes) and a
``quantize``/``dequantize`` pair, but have no codes or scales and fit any row length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T


@dataclass(frozen=True)
class FloatType:
    ggml: T
    itemsize: int

    @property
    def name(self) -> str:
        return self.ggml.name

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.itemsize

    def fits(self, row_len: int) -> bool:
        return row_len > 0

    def row_bytes(self, row_len: int) -> int:
        return row_len * self.itemsize

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Values -> the array GGUFWriter stores (its dtype names the type)."""
        x = np.asarray(x, np.float32)
        if self.ggml == T.F16:
            return x.astype(np.float16)
        return x.copy()

    def dequantize(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored).astype(np.float32)


F32 = FloatType(T.F32, 4)
F16 = FloatType(T.F16, 2)
FLOATS = {F32.ggml: F32, F16.ggml: F16}
