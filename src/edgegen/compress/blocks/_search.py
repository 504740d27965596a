"""Importance-weighted least-squares choice of a scale (and offset) for many small groups at once.

Both searches take groups x [n, s] with weights w [n, s] and a level set, try a handful of candidate
ranges per group, refit each candidate by weighted least squares given its codes, optionally round
the result (``quantize``, e.g. to half precision: what will actually be stored), re-round the codes,
and keep the candidate with the lowest weighted squared error. Everything is vectorised over groups
and candidates; nothing here knows a byte layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgegen.compress.blocks._base import nearest_index, recip

Rounder = Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def level_values(t: np.ndarray, levels: np.ndarray, uniform: bool) -> np.ndarray:
    """The level nearest to each t (t already divided by the scale), as float32; may reuse t."""
    if uniform:
        np.rint(t, out=t)
        return np.clip(t, levels[0], levels[-1], out=t)
    return levels[nearest_index(t, levels)]


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """Per row, the value with the largest magnitude (keeps its sign). [n, s] -> [n]."""
    idx = np.abs(x).argmax(axis=-1)
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, C, s] . [n, s] -> [n, C] (float32 products of <= 256 terms, returned as float64)."""
    return np.matmul(a, b[:, :, None])[..., 0].astype(np.float64)


def search_symmetric(
    x: np.ndarray,
    w: np.ndarray,
    levels: np.ndarray,
    uniform: bool,
    targets: np.ndarray,
    quantize: Rounder = _identity,
) -> np.ndarray:
    """Best scale s per group for value = s * level. ``targets``: levels the extreme value may map to.

    Weighted error of a candidate c with levels q: sum w x^2 - 2 c sum w x q + c^2 sum w q^2.
    """
    n = np.arange(len(x))
    mx = signed_absmax(x)  # [n]
    wx = w * x
    swxx = np.einsum("ns,ns->n", wx, x, dtype=np.float64)[:, None]
    cand = quantize(mx[:, None] * recip(targets.astype(np.float32))[None, :])  # [n, C]
    best_err = np.full(len(x), np.inf)
    best = np.zeros(len(x), np.float32)
    for rnd in range(2):  # pass 0: the candidates; pass 1: their least-squares refits
        t = x[:, None, :] * recip(cand)[..., None]
        q = level_values(t, levels, uniform)  # [n, C, s]
        swxq = _dot(q, wx)
        swqq = _dot(np.square(q, out=q), w)
        c = cand.astype(np.float64)
        err = swxx - 2 * c * swxq + c * c * swqq
        i = err.argmin(axis=1)
        e = err[n, i]
        better = e < best_err
        best[better], best_err[better] = cand[n, i][better], e[better]
        if rnd:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            cand = quantize(np.where(swqq > 0, swxq / np.where(swqq > 0, swqq, 1), cand).astype(np.float32))
    return best


def search_affine(
    x: np.ndarray,
    w: np.ndarray,
    n_levels: int,
    shrink: np.ndarray,
    quantize: Rounder = _identity,
    max_offset: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best (scale, offset) per group for value = scale * q + offset, q in 0..n_levels-1.

    ``shrink``: fractions of the range trimmed from either end to form the candidates.
    ``max_offset``: an upper bound on the offset (k-quants store a non-negative "min" subtracted).
    """
    top = n_levels - 1
    lo, hi = x.min(axis=-1), x.max(axis=-1)
    if max_offset is not None:
        lo = np.minimum(lo, max_offset)
    span = hi - lo
    a, b = np.meshgrid(shrink, shrink, indexing="ij")
    a, b = a.ravel().astype(np.float32), b.ravel().astype(np.float32)
    c_lo = lo[:, None] + a[None, :] * span[:, None]  # [n, C]
    c_hi = hi[:, None] - b[None, :] * span[:, None]
    scale = quantize(np.maximum(c_hi - c_lo, 0) / np.float32(top))
    offset = quantize(c_lo)
    n = np.arange(len(x))
    wx = w * x
    sw = w.sum(-1, dtype=np.float64)[:, None]
    swx = wx.sum(-1, dtype=np.float64)[:, None]
    swxx = np.einsum("ns,ns->n", wx, x, dtype=np.float64)[:, None]
    best_err = np.full(len(x), np.inf)
    best_s, best_o = np.zeros(len(x), np.float32), np.zeros(len(x), np.float32)
    for rnd in range(2):  # pass 0: the candidates; pass 1: their least-squares refits
        t = (x[:, None, :] - offset[..., None]) * recip(scale)[..., None]
        q = np.clip(np.rint(t, out=t), 0, top, out=t)  # [n, C, s]
        swq, swxq = _dot(q, w), _dot(q, wx)
        swqq = _dot(np.square(q, out=q), w)
        s, o = scale.astype(np.float64), offset.astype(np.float64)
        # sum w (x - s q - o)^2 expanded
        err = swxx + s * s * swqq + o * o * sw - 2 * s * swxq - 2 * o * swx + 2 * s * o * swq
        i = err.argmin(axis=1)
        e = err[n, i]
        better = e < best_err
        best_s[better], best_o[better], best_err[better] = scale[n, i][better], offset[n, i][better], e[better]
        if rnd:
            break
        scale, offset = _affine_lsq(sw, swq, swqq, swx, swxq, scale, offset, max_offset)
        scale, offset = quantize(scale), quantize(offset)
    return best_s, best_o


def _affine_lsq(sw, swq, swqq, swx, swxq, scale, offset, max_offset):
    """Weighted least-squares (scale, offset) given code sums; falls back to the input when singular."""
    det = swqq * sw - swq * swq
    ok = det > 1e-9 * np.maximum(swqq * sw, 1e-30)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(ok, (swxq * sw - swq * swx) / np.where(ok, det, 1), scale)
        o = np.where(ok, (swqq * swx - swq * swxq) / np.where(ok, det, 1), offset)
        if max_offset is not None:
            over = o > max_offset
            s = np.where(over & (swqq > 0), (swxq - max_offset * swq) / np.where(swqq > 0, swqq, 1), s)
            o = np.where(over, max_offset, o)
    s = np.where(s > 0, s, scale)
    return s.astype(np.float32), o.astype(np.float32)
