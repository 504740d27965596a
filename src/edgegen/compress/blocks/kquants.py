"""The 256-wide "k-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.

A super-block of 256 values holds sub-blocks (16 or 32 values) whose scales (and mins) are stored as
small integers times one half-precision super-scale. Layouts (ggml-common.h, little endian):

    Q2_K  u8 scales[16] (scale | min << 4); u8 qs[64]; half d; half dmin
          value = d*scale * q - dmin*min,          q in 0..3,   16 sub-blocks of 16
    Q3_K  u8 hmask[32]; u8 qs[64]; u8 scales[12] (6-bit, stored +32); half d
          value = d*(scale) * (q - 4),              q in 0..7,   16 sub-blocks of 16
    Q4_K  half d; half dmin; u8 scales[12] (6-bit scale and min); u8 qs[128]
          value = d*scale * q - dmin*min,           q in 0..15,  8 sub-blocks of 32
    Q5_K  half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
          value = d*scale * q - dmin*min,           q in 0..31,  8 sub-blocks of 32
    Q6_K  u8 ql[128]; u8 qh[64]; i8 scales[16]; half d
          value = d*scale * (q - 32),               q in 0..63,  16 sub-blocks of 16

2-bit fields: byte 32*h + l holds, at bit 2*j, the value 128*h + 32*j + l. Single high bits
(Q3_K hmask, Q5_K qh): bit b of byte l belongs to value 32*b + l. Fitting is two-level: a weighted
search per sub-block (``_search``), then the sub-scales are rounded onto the super-scale and the
super-scale(s) refit by weighted least squares given the codes.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from edgegen.compress.blocks._base import Grid, QuantType, bits_to_bytes, bytes_to_bits, f16, nibbles
from edgegen.compress.blocks._search import recip, search_affine, search_symmetric, signed_absmax

SHRINK = np.array([0.0, 0.04, 0.1], np.float32)
# Super-scales tried as fractions of the one that fits the largest sub-scale exactly: a smaller one
# clips an outlier sub-block but resolves all the others' sub-scales more finely.
SUPER_SHRINK = (1.0, 0.8, 0.62, 0.45)


def _halves(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).astype(np.float16).view(np.uint8).reshape(len(a), 2)


def _read_half(raw: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, at : at + 2]).view(np.float16)[:, 0].astype(np.float32)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """codes 0..3 [n, 256] -> [n, 64]."""
    q = q.reshape(len(q), 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(len(q), 64)


def _unpack_2bit(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(len(raw), 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (b & 3).reshape(len(raw), 256)


def _pack_highbits(h: np.ndarray) -> np.ndarray:
    """one bit per value [n, 256] -> [n, 32]: bit b of byte l is value 32*b + l."""
    return bits_to_bytes(h.reshape(len(h), 8, 32).transpose(0, 2, 1)).reshape(len(h), 32)


def _unpack_highbits(raw: np.ndarray) -> np.ndarray:
    return bytes_to_bits(raw.reshape(len(raw), 32, 1)).reshape(len(raw), 32, 8).transpose(0, 2, 1).reshape(
        len(raw), 256)


def _pack_nibbles_32(q: np.ndarray) -> np.ndarray:
    """codes 0..15 [n, 256] -> [n, 128]: byte 32*j + l = value 64*j + l | value 64*j + 32 + l << 4."""
    q = q.reshape(len(q), 4, 2, 32)
    return nibbles(q[:, :, 0], q[:, :, 1]).reshape(len(q), 128)


def _unpack_nibbles_32(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(len(raw), 4, 1, 32)
    return np.concatenate([b & 0x0F, b >> 4], axis=2).reshape(len(raw), 256)


class _KQuant(QuantType):
    block = 256
    sub_targets: np.ndarray = np.zeros(0, np.float32)  # symmetric types: candidates for the sub-search

    def _subs(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, self.sub)

    def _refine(self, x: np.ndarray, w: np.ndarray, grid: Grid) -> Grid:
        """Refit the super-scale(s) by weighted least squares given codes and sub-scales; keep if better."""
        new = self._refit(x, w, grid)
        worse = self.weighted_error(x, w, new) > self.weighted_error(x, w, grid)
        if worse.any():
            new.put(worse, grid.take(worse))
        return new

    def fit_search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        return self._refine(x, w, self._search(x, w))

    def _best_of(self, x: np.ndarray, w: np.ndarray, grids: list[Grid]) -> Grid:
        best, best_err = grids[0], self.weighted_error(x, w, grids[0])
        for g in grids[1:]:
            err = self.weighted_error(x, w, g)
            better = err < best_err
            if better.any():
                best.put(better, g.take(better))
                best_err = np.where(better, err, best_err)
        return best


class _AffineK(_KQuant):
    """value = d*sc * q - dmin*mn with unsigned sub-scale/min codes of ``sbits`` bits."""

    sbits: int

    def _super(self, s: np.ndarray, mu: np.ndarray, shrink: float = 1.0) -> Grid:
        top = np.float32((1 << self.sbits) - 1)
        d = f16(s.max(axis=1) * np.float32(shrink) / top)
        dmin = f16(mu.max(axis=1) * np.float32(shrink) / top)
        sc = np.clip(np.rint(s * recip(d)[:, None]), 0, top).astype(np.uint8)
        mn = np.clip(np.rint(mu * recip(dmin)[:, None]), 0, top).astype(np.uint8)
        return self._grid(d, dmin, sc, mn)

    def _grid(self, d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, mn: np.ndarray) -> Grid:
        fields = {"d": d.astype(np.float32), "dmin": dmin.astype(np.float32), "sc": sc, "mn": mn}
        return self.grid_from_fields(fields)

    def grid_from_fields(self, fields: dict[str, np.ndarray]) -> Grid:
        d, dmin = fields["d"][:, None], fields["dmin"][:, None]
        return Grid(d * fields["sc"].astype(np.float32), -(dmin * fields["mn"].astype(np.float32)), dict(fields))

    def fit_rtn(self, x: np.ndarray) -> Grid:
        xs = x.reshape(len(x), self.n_sub, self.sub)
        lo, hi = np.minimum(xs.min(axis=-1), 0), xs.max(axis=-1)
        return self._super((hi - lo) / np.float32(len(self.levels) - 1), -lo)

    def _search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        s, o = search_affine(self._subs(x), self._subs(w), len(self.levels), SHRINK, max_offset=0.0)
        s, mu = s.reshape(len(x), -1), -o.reshape(len(x), -1)
        return self._best_of(x, w, [self._super(s, mu, f) for f in SUPER_SHRINK])

    def _refit(self, x: np.ndarray, w: np.ndarray, grid: Grid) -> Grid:
        q = self.levels[self.block_codes(x, grid)].astype(np.float64)
        a = q * self.expand(grid.fields["sc"].astype(np.float64))  # value = d * a - dmin * b
        b = self.expand(grid.fields["mn"].astype(np.float64))
        saa, sbb, sab = (w * a * a).sum(1), (w * b * b).sum(1), (w * a * b).sum(1)
        sxa, sxb = (w * x * a).sum(1), (w * x * b).sum(1)
        det = saa * sbb - sab * sab
        ok = det > 1e-12 * np.maximum(saa * sbb, 1e-30)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(ok, (sxa * sbb - sxb * sab) / np.where(ok, det, 1), grid.fields["d"])
            dmin = np.where(ok, (sxa * sab - sxb * saa) / np.where(ok, det, 1), grid.fields["dmin"])
        d = np.where(d > 0, d, grid.fields["d"])
        dmin = np.where(dmin >= 0, dmin, grid.fields["dmin"])
        return self._grid(f16(d), f16(dmin), grid.fields["sc"], grid.fields["mn"])


class _SymmetricK(_KQuant):
    """value = d*sc * level with signed sub-scale codes in [smin, smax]."""

    smin: int
    smax: int

    def _super(self, s: np.ndarray, shrink: float = 1.0) -> Grid:
        d = f16(signed_absmax(s) * np.float32(shrink) / np.float32(self.smin))
        sc = np.clip(np.rint(s * recip(d)[:, None]), self.smin, self.smax).astype(np.int8)
        return self._grid(d, sc)

    def _grid(self, d: np.ndarray, sc: np.ndarray) -> Grid:
        return self.grid_from_fields({"d": d.astype(np.float32), "sc": sc})

    def grid_from_fields(self, fields: dict[str, np.ndarray]) -> Grid:
        scale = fields["d"][:, None] * fields["sc"].astype(np.float32)
        return Grid(scale, np.zeros_like(scale), dict(fields))

    def fit_rtn(self, x: np.ndarray) -> Grid:
        xs = x.reshape(len(x), self.n_sub, self.sub)
        return self._super(signed_absmax(xs) / np.float32(self.levels[0]))

    def _search(self, x: np.ndarray, w: np.ndarray) -> Grid:
        s = search_symmetric(self._subs(x), self._subs(w), self.levels, True, self.sub_targets).reshape(len(x), -1)
        return self._best_of(x, w, [self._super(s, f) for f in SUPER_SHRINK])

    def _refit(self, x: np.ndarray, w: np.ndarray, grid: Grid) -> Grid:
        q = self.levels[self.block_codes(x, grid)].astype(np.float64)
        a = q * self.expand(grid.fields["sc"].astype(np.float64))
        saa, sxa = (w * a * a).sum(1), (w * x * a).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(saa > 0, sxa / np.where(saa > 0, saa, 1), grid.fields["d"])
        return self._grid(f16(d), grid.fields["sc"])


class Q2_K(_AffineK):
    ggml = T.Q2_K
    sub = 16
    sbits = 4
    levels = np.arange(0, 4, dtype=np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        f = grid.fields
        scales = nibbles(f["sc"], f["mn"])
        return np.concatenate([scales, _pack_2bit(codes), _halves(f["d"]), _halves(f["dmin"])], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        scales = raw[:, :16]
        fields = {"d": _read_half(raw, 80), "dmin": _read_half(raw, 82), "sc": scales & 0x0F, "mn": scales >> 4}
        return _unpack_2bit(raw[:, 16:80]), fields


def _pack_k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> 12 bytes (the Q4_K/Q5_K packing)."""
    lo = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    mid = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1).astype(np.uint8)


def _unpack_k4_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, mid, hi = raw[:, 0:4], raw[:, 4:8], raw[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


class Q4_K(_AffineK):
    ggml = T.Q4_K
    sub = 32
    sbits = 6
    levels = np.arange(0, 16, dtype=np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        f = grid.fields
        return np.concatenate([_halves(f["d"]), _halves(f["dmin"]), _pack_k4_scales(f["sc"], f["mn"]),
                               _pack_nibbles_32(codes)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        sc, mn = _unpack_k4_scales(raw[:, 4:16])
        fields = {"d": _read_half(raw, 0), "dmin": _read_half(raw, 2), "sc": sc, "mn": mn}
        return _unpack_nibbles_32(raw[:, 16:144]), fields


class Q5_K(_AffineK):
    ggml = T.Q5_K
    sub = 32
    sbits = 6
    levels = np.arange(0, 32, dtype=np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        f = grid.fields
        return np.concatenate([_halves(f["d"]), _halves(f["dmin"]), _pack_k4_scales(f["sc"], f["mn"]),
                               _pack_highbits(codes >> 4), _pack_nibbles_32(codes & 0x0F)], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        sc, mn = _unpack_k4_scales(raw[:, 4:16])
        fields = {"d": _read_half(raw, 0), "dmin": _read_half(raw, 2), "sc": sc, "mn": mn}
        codes = _unpack_nibbles_32(raw[:, 48:176]) | (_unpack_highbits(raw[:, 16:48]) << 4)
        return codes, fields


class Q3_K(_SymmetricK):
    ggml = T.Q3_K
    sub = 16
    smin, smax = -32, 31
    levels = np.arange(-4, 4, dtype=np.float32)
    sub_targets = np.array([-4.5, -4.0, -3.5, -3.0, 3.0, 3.5], np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        f = grid.fields
        s6 = (f["sc"].astype(np.int16) + 32).astype(np.uint8)
        low, high = s6 & 0x0F, s6 >> 4
        scales = np.concatenate([
            nibbles(low[:, :8], low[:, 8:]),
            high[:, 0:4] | (high[:, 4:8] << 2) | (high[:, 8:12] << 4) | (high[:, 12:16] << 6),
        ], axis=1)
        return np.concatenate([_pack_highbits(codes >> 2), _pack_2bit(codes & 3), scales, _halves(f["d"])], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        codes = _unpack_2bit(raw[:, 32:96]) | (_unpack_highbits(raw[:, 0:32]) << 2)
        s = raw[:, 96:108]
        low = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=1)
        high = (s[:, None, 8:12] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3  # [n, 4, 4]
        s6 = low | (high.reshape(len(raw), 16) << 4)
        return codes, {"d": _read_half(raw, 108), "sc": (s6.astype(np.int16) - 32).astype(np.int8)}


class Q6_K(_SymmetricK):
    ggml = T.Q6_K
    sub = 16
    smin, smax = -128, 127
    levels = np.arange(-32, 32, dtype=np.float32)
    sub_targets = np.array([-32.5, -32.0, -31.5, -31.0, 31.0], np.float32)

    def pack(self, codes: np.ndarray, grid: Grid) -> np.ndarray:
        c = codes.reshape(len(codes), 2, 4, 32)
        low, high = c & 0x0F, c >> 4
        ql = np.concatenate([nibbles(low[:, :, 0], low[:, :, 2]), nibbles(low[:, :, 1], low[:, :, 3])], axis=2)
        qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
        f = grid.fields
        return np.concatenate([ql.reshape(len(c), 128), qh.reshape(len(c), 64),
                               f["sc"].astype(np.int8).view(np.uint8), _halves(f["d"])], axis=1)

    def unpack(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(raw)
        ql = raw[:, :128].reshape(n, 2, 2, 32)  # [half, l / l+32, l]
        qh = raw[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        codes = (low | ((qh & 3) << 4)).reshape(n, 256)
        fields = {"d": _read_half(raw, 208), "sc": np.ascontiguousarray(raw[:, 192:208]).view(np.int8)}
        return codes, fields
