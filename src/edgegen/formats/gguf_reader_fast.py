"""gguf-py's ``GGUFReader``, parsing over a plain ndarray view of its memory map (same bytes, same parser).

While parsing metadata the reader slices its ``np.memmap`` once or twice per value, i.e. ~250,000
times for a 49k-token vocabulary with merges, and every slice of a memmap builds a new memmap object
(``memmap.__array_finalize__``): most of the parse time. Storing the map as a plain ndarray view
(the mapping stays alive through ``.base``) makes opening SmolLM2 about 2.5x faster. Tensor ``data``
arrays become plain ndarray views of the same mapping instead of memmaps.

This relies only on the reader keeping its buffer in the public ``data`` attribute. It does not
validate anything; ``gguf_file.open_reader``/``validate_gguf`` wrap it with error translation.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np


class PlainViewGGUFReader(gguf.GGUFReader):
    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: Any) -> None:
        self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

