"""The 32-wide block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL.

Layouts (ggml-common.h; all little endian, ``half`` = IEEE binary16):

    Q4_0    half d; u8 qs[16]                 value = d * (q - 8)
    Q4_1    half d; half m; u8 qs[16]         value = d * q + m
    Q5_0    half d; u32 qh; u8 qs[16]         value = d * (q - 16)
    Q5_1    half d; half m; u32 qh; u8 qs[16] value = d * q + m
    Q8_0    half d; i8 qs[32]                 value = d * q  (we emit -127..127, like ggml)
    IQ4_NL  half d; u8 qs[16]                 value = d * kvalues[q]  (a fixed non-uniform table)

Nibbles: byte j holds value j in its low half and value j + 16 in its high half; Q5's fifth bits
sit in ``qh``, bit j for value j. Every block has one scale, so ``sub == block == 32``.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from edgegen.compress.blocks._base import Grid, QuantType, bits_to_bytes, bytes_to_bits, f16, nibbles
from edgegen.compress.blocks._search import search_affine, search_symmetric, signed_absmax

IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
AFFINE_SHRINK = np.array([0.0, 0.04, 0.1], np.float32)


def _half_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).astype(np.float16).view(np.uint8).reshape(len(a), 2)


def _read_half(raw: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, at : at + 2]).view(np.float16)[:, 0].astype(np.float32)


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    return nibbles(codes[:, :16], codes[:, 16:32])


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


class _Symmetric32(QuantType):
    """One half-precision scale per 32 values, value = d * level."""

    block = 32
    sub = 32
    rtn_target: float  # the level the largest-magnitude value maps to under round-to-nearest
    targets: np.ndarray  # candidate levels for the largest-magnitude value (weighted search)

    def _grid(self, d: np.ndarray) -> Grid:
        d = f16(d)
        return Grid(d[:, None], np.zeros((len(d), 1), np.float32), {"d": d.copy()})

    def fit_rtn(self, x: np.ndarray) -> Grid:
        return self._grid(signed_absmax(x) / np.float32(self.rtn_target))

    def fit_search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        return self._grid(search_symmetric(x, w, self.fit_levels, self.uniform, self.targets, f16))

    def grid_from_fields(self, fields: dict[str, np.ndarray]) -> Grid:
        d = fields["d"].astype(np.float32)
        return Grid(d[:, None], np.zeros((len(d), 1), np.float32), dict(fields))

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        return np.concatenate([_half_bytes(grid.fields["d"]), _pack_nibbles(codes)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return _unpack_nibbles(raw[:, 2:18]), {"d": _read_half(raw, 0)}


class Q4_0(_Symmetric32):
    ggml = T.Q4_0
    levels = np.arange(-8, 8, dtype=np.float32)
    rtn_target = -8.0
    targets = np.array([-8.5, -8.0, -7.5, -7.0, -6.5, 7.0, 7.5], np.float32)


class IQ4_NL(_Symmetric32):
    ggml = T.IQ4_NL
    levels = IQ4_NL_VALUES
    uniform = False
    rtn_target = -127.0
    targets = np.array([-133.0, -127.0, -121.0, -115.0, -109.0, 113.0, 119.0], np.float32)


class Q5_0(_Symmetric32):
    ggml = T.Q5_0
    levels = np.arange(-16, 16, dtype=np.float32)
    rtn_target = -16.0
    targets = np.array([-16.5, -16.0, -15.5, -15.0, 15.0, 15.5], np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        qh = bits_to_bytes(codes >> 4)
        return np.concatenate([_half_bytes(grid.fields["d"]), qh, _pack_nibbles(codes & 0x0F)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        high = bytes_to_bits(raw[:, 2:6])
        return _unpack_nibbles(raw[:, 6:22]) | (high << 4), {"d": _read_half(raw, 0)}


class Q8_0(_Symmetric32):
    ggml = T.Q8_0
    levels = np.arange(-128, 128, dtype=np.float32)
    first_code = 1
    rtn_target = 127.0
    targets = np.array([127.0, 126.0, 125.0], np.float32)

    def fit_rtn(self, x: np.ndarray) -> Grid:
        return self._grid(np.abs(x).max(axis=-1) / np.float32(127))

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        q = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([_half_bytes(grid.fields["d"]), q], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        q = np.ascontiguousarray(raw[:, 2:34]).view(np.int8).astype(np.int16)
        return (q + 128).astype(np.uint8), {"d": _read_half(raw, 0)}


class _Affine32(QuantType):
    """Half-precision scale and minimum per 32 values, value = d * q + m."""

    block = 32
    sub = 32

    def _grid(self, d: np.ndarray, m: np.ndarray) -> Grid:
        d, m = f16(d), f16(m)
        return Grid(d[:, None], m[:, None], {"d": d.copy(), "m": m.copy()})

    def fit_rtn(self, x: np.ndarray) -> Grid:
        lo, hi = x.min(axis=-1), x.max(axis=-1)
        return self._grid((hi - lo) / np.float32(len(self.levels) - 1), lo)

    def fit_search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        return self._grid(*search_affine(x, w, len(self.levels), AFFINE_SHRINK, f16))

    def grid_from_fields(self, fields: dict[str, np.ndarray]) -> Grid:
        d, m = fields["d"].astype(np.float32), fields["m"].astype(np.float32)
        return Grid(d[:, None], m[:, None], dict(fields))

    def _head(self, grid: Grid) -> np.ndarray:
        return np.concatenate([_half_bytes(grid.fields["d"]), _half_bytes(grid.fields["m"])], axis=1)

    def _fields(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        return {"d": _read_half(raw, 0), "m": _read_half(raw, 2)}


class Q4_1(_Affine32):
    ggml = T.Q4_1
    levels = np.arange(0, 16, dtype=np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        return np.concatenate([self._head(grid), _pack_nibbles(codes)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return _unpack_nibbles(raw[:, 4:20]), self._fields(raw)


class Q5_1(_Affine32):
    ggml = T.Q5_1
    levels = np.arange(0, 32, dtype=np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        qh = bits_to_bytes(codes >> 4)
        return np.concatenate([self._head(grid), qh, _pack_nibbles(codes & 0x0F)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        high = bytes_to_bits(raw[:, 4:8])
        return _unpack_nibbles(raw[:, 8:24]) | (high << 4), self._fields(raw)
