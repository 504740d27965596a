"""The shape every block format shares: codes on a level grid, scaled per sub-block, packed per block.

A block format stores ``block`` consecutive values of a row in ``type_size`` bytes. Inside a block,
each run of ``sub`` values shares an affine map from integer codes to values,

    value = scale[sub-block] * levels[code] + offset[sub-block]

computed in float32 in exactly the order ggml's decoder computes it (so our values equal the decoded
ones bit for bit). ``Grid`` holds that map for many blocks, plus the stored fields (half-precision
scales, packed sub-scales) that ``pack`` writes. A ``QuantType`` subclass supplies:

    fit_rtn(x)            the plain min/max (round-to-nearest) grid, our baseline
    fit(x, w)             the importance-weighted least-squares grid (never worse than fit_rtn)
    grid_from_fields(f)   scale/offset as the decoder derives them from stored fields
    pack(codes, grid)     bytes, laid out as in ggml-common.h
    unpack(raw)           codes and stored fields back

Subclasses register themselves by ggml type. This module does no I/O and knows no model.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

REGISTRY: dict[GGMLQuantizationType, QuantType] = {}

# Rows of blocks processed at once by the vectorised searches (bounds temporary memory).
CHUNK_VALUES = 1 << 18


@dataclass
class Grid:
    """Per-sub-block affine maps for ``n`` blocks: value = scale * level + offset."""

    scale: np.ndarray  # float32 [n, n_sub]
    offset: np.ndarray  # float32 [n, n_sub] (zeros for symmetric formats)
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # stored fields, per block

    def take(self, index: np.ndarray) -> Grid:
        return Grid(self.scale[index], self.offset[index], {k: v[index] for k, v in self.fields.items()})

    def put(self, index: np.ndarray, other: Grid) -> None:
        self.scale[index] = other.scale
        self.offset[index] = other.offset
        for k, v in self.fields.items():
            v[index] = other.fields[k]


def f16(x: np.ndarray) -> np.ndarray:
    """Round to half precision and back: the value a stored ``ggml_half`` decodes to."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(b != 0, a / np.where(b != 0, b, 1), 0)
    return out.astype(np.float32, copy=False)


def recip(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(a != 0, np.float32(1) / a, np.float32(0)).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def _lut(levels_bytes: bytes) -> tuple[np.ndarray, int]:
    levels = np.frombuffer(levels_bytes, np.float32)
    lo = int(np.floor(levels[0])) * 2 - 2
    hi = int(np.ceil(levels[-1])) * 2 + 2
    centres = (np.arange(lo, hi + 1, dtype=np.float64) + 0.5) / 2  # the middle of each half-unit cell
    mids = (levels[1:].astype(np.float64) + levels[:-1]) / 2
    return np.searchsorted(mids, centres).astype(np.uint8), lo


def nearest_index(t: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of integer ``levels`` to each t, by table lookup on half-unit cells.

    Midpoints of integer levels are multiples of 1/2, so no cell [k/2, (k+1)/2) straddles one and
    the table is exact (a value exactly on a midpoint goes to the upper level).
    """
    lut, lo = _lut(np.ascontiguousarray(levels, np.float32).tobytes())
    k = np.floor(t * 2)
    np.clip(k, lo, lo + len(lut) - 1, out=k)
    return lut[k.astype(np.intp) - lo]


def nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two 4-bit code arrays into one byte array (``lo`` in the low nibble)."""
    return (lo.astype(np.uint8) & 0x0F) | (hi.astype(np.uint8) << 4)


def bits_to_bytes(bits: np.ndarray) -> np.ndarray:
    """[..., 8*k] array of 0/1 into [..., k] bytes, bit i of byte j = element 8*j + i (little endian)."""
    return np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")


def bytes_to_bits(raw: np.ndarray) -> np.ndarray:
    return np.unpackbits(raw, axis=-1, bitorder="little")


class QuantType(ABC):
    """A GGUF block format: how values are chosen (fit) and how they are laid out (pack)."""

    ggml: ClassVar[GGMLQuantizationType]
    block: ClassVar[int]  # values per block
    sub: ClassVar[int]  # values sharing one scale/offset
    levels: ClassVar[np.ndarray]  # float32 code -> level, ascending
    uniform: ClassVar[bool] = True  # levels are consecutive integers
    first_code: ClassVar[int] = 0  # the lowest code the fitter emits (Q8_0 leaves -128 unused, as ggml does)

    @property
    def fit_levels(self) -> np.ndarray:
        return self.levels[self.first_code :]

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "ggml" in cls.__dict__:
            REGISTRY[cls.ggml] = cls()

    # ---- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.ggml.name

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml][1]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block

    @property
    def n_sub(self) -> int:
        return self.block // self.sub

    def fits(self, row_len: int) -> bool:
        return row_len % self.block == 0

    def row_bytes(self, row_len: int) -> int:
        return row_len // self.block * self.type_size

    # ---- the maths -----------------------------------------------------------------------------
    def codes(self, x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Nearest level to each value under an elementwise (broadcast) scale/offset."""
        t = safe_div(np.asarray(x, np.float32) - offset, scale)
        if self.uniform:
            lo = self.levels[0]
            return np.clip(np.rint(t - lo), self.first_code, len(self.levels) - 1).astype(np.uint8)
        return (nearest_index(t, self.fit_levels) + self.first_code).astype(np.uint8)

    def expand(self, a: np.ndarray) -> np.ndarray:
        """[n, n_sub] per-sub-block array -> [n, block] per value."""
        return np.repeat(a, self.sub, axis=-1)

    def block_codes(self, x: np.ndarray, grid: Grid) -> np.ndarray:
        return self.codes(x, self.expand(grid.scale), self.expand(grid.offset))

    def values(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        """The decoded values, float32, in the decoder's order of operations."""
        lv = self.levels[codes.astype(np.intp)]
        return self.expand(grid.scale) * lv + self.expand(grid.offset)

    def weighted_error(self, x: np.ndarray, w: np.ndarray, grid: Grid) -> np.ndarray:
        """Per block: sum of w * (x - value)^2 with the nearest codes under ``grid``."""
        v = self.values(self.block_codes(x, grid), grid)
        return np.einsum("nb,nb->n", w, np.square(x - v, dtype=np.float32), dtype=np.float64)

    @abstractmethod
    def fit_rtn(self, x: np.ndarray) -> Grid:
        """Round-to-nearest baseline grid for blocks x [n, block]."""

    @abstractmethod
    def fit_search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        """Importance-weighted grid search for blocks x [n, block] with weights w [n, block]."""

    @abstractmethod
    def grid_from_fields(self, fields: dict[str, np.ndarray]) -> Grid:
        """Scale/offset exactly as the decoder derives them from the stored fields."""

    @abstractmethod
    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        """codes [n, block] + grid -> bytes [n, type_size]."""

    @abstractmethod
    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """bytes [n, type_size] -> (codes [n, block], stored fields)."""

    # ---- conveniences built on the above ---------------------------------------------------------
    def fit(self, x: np.ndarray, w: np.ndarray | None = None) -> Grid:
        """Weighted fit, keeping per block whichever of search/RTN has the lower weighted error."""
        x = np.asarray(x, np.float32).reshape(-1, self.block)
        w = np.ones_like(x) if w is None else np.asarray(w, np.float32).reshape(-1, self.block)
        step = max(1, CHUNK_VALUES // self.block)
        parts = []
        for s in range(0, len(x), step):
            xs, ws = x[s : s + step], w[s : s + step]
            best = self.fit_search(xs, ws)
            rtn = self.fit_rtn(xs)
            worse = self.weighted_error(xs, ws, best) > self.weighted_error(xs, ws, rtn)
            if worse.any():
                best.put(worse, rtn.take(worse))
            parts.append(best)
        return _concat(parts)

    def quantize(self, x: np.ndarray, w: np.ndarray | None = None, *, rtn: bool = False) -> np.ndarray:
        """Values x [..., k*block] -> bytes [..., k*type_size] (weighted fit unless ``rtn``)."""
        x = np.asarray(x, np.float32)
        shape = x.shape
        blocks = x.reshape(-1, self.block)
        grid = self.fit_rtn(blocks) if rtn else self.fit(blocks, w)
        raw = self.pack(self.block_codes(blocks, grid), grid)
        return raw.reshape(*shape[:-1], shape[-1] // self.block * self.type_size)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.uint8)
        shape = raw.shape
        codes, fields = self.unpack(raw.reshape(-1, self.type_size))
        vals = self.values(codes, self.grid_from_fields(fields))
        return vals.reshape(*shape[:-1], shape[-1] // self.type_size * self.block)


def _concat(parts: list[Grid]) -> Grid:
    if len(parts) == 1:
        return parts[0]
    return Grid(
        np.concatenate([p.scale for p in parts]),
        np.concatenate([p.offset for p in parts]),
        {k: np.concatenate([p.fields[k] for p in parts]) for k in parts[0].fields},
    )
