"""Rounding weight matrices into block formats: weighted least squares, then GPTQ error feedback.

``round_parts(parts, types, hessian=H)`` quantizes several matrices that read the same input (so share
one Hessian: q/k/v, gate/up, or one matrix in several candidate types) in a single pass over the
columns. At the start of each block (32 or 256 columns) every part's grid (scales, mins,
sub-scales) is fitted per row by importance-weighted least squares (importance = diag(H), the input
mean squares); then columns are rounded one at a time onto that grid, and each column's rounding
error is spread over the columns not yet rounded through the inverse Hessian (GPTQ / Optimal Brain
Quantization, with lazy batch updates every 32 columns), so that the output error ``(W - Q) x``
stays small on the calibration inputs, not just ``W - Q``. Everything stays inside the format's
constraints: the grid is the one that gets stored and every value is a code on it; the returned
values are recomputed from codes and grid exactly as llama.cpp decodes them.

Without a Hessian it is plain weighted rounding with ``weights``. Pure maths on arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgegen.compress.blocks import FloatType, Grid, QuantType
from edgegen.errors import QuantizationError

CHUNK = 32  # lazy-batch width; every block size is a multiple of it


@dataclass
class Rounded:
    data: np.ndarray  # what GGUFWriter stores: uint8 [rows, row_bytes], or float16/float32 [rows, cols]
    values: np.ndarray  # float32 [rows, cols]: exactly what llama.cpp will decode


def round_tensor(
    W: np.ndarray,
    qtype: QuantType | FloatType,
    *,
    hessian: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    damp: float = 0.01,
) -> Rounded:
    """Quantize one matrix W [rows, cols] (see ``round_parts``)."""
    return round_parts([W], [qtype], hessian=hessian, weights=[weights], damp=damp)[0]


def round_parts(
    parts: Sequence[np.ndarray],
    types: Sequence[QuantType | FloatType],
    *,
    hessian: np.ndarray | None = None,
    weights: Sequence[np.ndarray | None] | None = None,
    damp: float = 0.01,
    chol: torch.Tensor | None = None,
) -> list[Rounded]:
    """Quantize matrices with equal column count, part i into types[i]; GPTQ when a Hessian is given.

    ``weights[i]`` ([cols] or [rows, cols]) steer the plain weighted fit when there is no Hessian;
    ``chol`` is ``inverse_cholesky(hessian, damp)`` if the caller already has it.
    """
    parts = [np.asarray(p, np.float32) for p in parts]
    cols = parts[0].shape[1]
    out: list[Rounded | None] = [None] * len(parts)
    blocky: list[int] = []
    for i, (W, qt) in enumerate(zip(parts, types, strict=True)):
        if W.shape[1] != cols:
            raise QuantizationError("parts rounded together must have the same number of columns")
        if isinstance(qt, FloatType):
            data = qt.quantize(W)
            out[i] = Rounded(data, qt.dequantize(data))
        elif not qt.fits(cols):
            raise QuantizationError(f"{qt.name} cannot hold rows of {cols} values")
        elif hessian is None or hessian.shape != (cols, cols):
            w = weights[i] if weights is not None else None
            out[i] = _plain(W, qt, w)
        else:
            blocky.append(i)
    if blocky:
        U = chol if chol is not None else inverse_cholesky(hessian, damp)  # type: ignore[arg-type]
        done = _gptq([parts[i] for i in blocky], [types[i] for i in blocky], hessian, U)  # type: ignore[arg-type]
        for i, r in zip(blocky, done, strict=True):
            out[i] = r
    return out  # type: ignore[return-value]


def _plain(W: np.ndarray, qt: QuantType, weights: np.ndarray | None) -> Rounded:
    rows, cols = W.shape
    w = np.ones_like(W) if weights is None else np.broadcast_to(np.asarray(weights, np.float32), W.shape)
    blocks = W.reshape(-1, qt.block)
    grid = qt.fit(blocks, np.ascontiguousarray(w).reshape(-1, qt.block))
    codes = qt.block_codes(blocks, grid)
    return Rounded(qt.pack(codes, grid).reshape(rows, -1), qt.values(codes, grid).reshape(rows, cols))


def hessian_error(E: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Per row r: E_r H E_r^T, the mean squared output error the weight error E causes."""
    Et = torch.from_numpy(np.array(E, np.float32))  # a copy: inputs may be read-only views
    EH = Et @ torch.from_numpy(np.array(H, np.float32))
    return (EH * Et).sum(1, dtype=torch.float64).numpy()


def inverse_cholesky(H: np.ndarray, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1; damps harder until positive definite."""
    Ht = torch.from_numpy(np.array(H, np.float32))
    diag = torch.diagonal(Ht)
    dead = diag <= 0
    mean = float(diag[~dead].mean()) if bool((~dead).any()) else 1.0
    diag[dead] = mean  # inputs never seen: their weights cannot matter; keep the system well posed
    eye = torch.eye(len(Ht))
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(Ht + damp * mean * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
        damp *= 10
    raise QuantizationError("the calibration Hessian is not positive definite even with heavy damping")


@dataclass
class _Part:
    qt: QuantType
    rows: slice
    grids: list[Grid]


def _gptq(parts: list[np.ndarray], types: list[QuantType], H: np.ndarray, U: torch.Tensor) -> list[Rounded]:
    cols = parts[0].shape[1]
    importance = np.maximum(np.diag(H).astype(np.float32), 1e-12)
    W = torch.from_numpy(np.concatenate(parts, axis=0))  # [R, cols], updated in place as errors flow forward
    R = W.shape[0]
    specs, start = [], 0
    for p, qt in zip(parts, types, strict=True):
        specs.append(_Part(qt, slice(start, start + len(p)), []))
        start += len(p)
    S, OFF, INV = torch.zeros(R, cols), torch.zeros(R, cols), torch.zeros(R, cols)  # per-value grid
    LV = torch.empty(R, cols)  # chosen level per value
    lo = torch.cat([torch.full((len(p),), float(s.qt.fit_levels[0])) for p, s in zip(parts, specs)])
    hi = torch.cat([torch.full((len(p),), float(s.qt.levels[-1])) for p, s in zip(parts, specs)])
    nonuniform = [s for s in specs if not s.qt.uniform]
    mids = {id(s): torch.from_numpy((s.qt.fit_levels[1:] + s.qt.fit_levels[:-1]) / 2) for s in nonuniform}
    by_type: dict[int, list[_Part]] = {}
    for s in specs:
        by_type.setdefault(id(s.qt), []).append(s)
    for c0 in range(0, cols, CHUNK):
        for same in by_type.values():
            qt = same[0].qt
            if c0 % qt.block:
                continue
            # a new block starts: fit the grids of every part in this format on the updated weights, at once
            b = slice(c0, c0 + qt.block)
            Wb = np.concatenate([W[s.rows, b].numpy() for s in same]) if len(same) > 1 else W[same[0].rows, b].numpy()
            grid = qt.fit(Wb, np.broadcast_to(importance[b], Wb.shape))
            sc, off = qt.expand(grid.scale), qt.expand(grid.offset)
            with np.errstate(divide="ignore"):
                inv = np.where(sc != 0, 1 / sc, 0).astype(np.float32)
            at = 0
            for s in same:
                n = s.rows.stop - s.rows.start
                part = slice(at, at + n)
                s.grids.append(grid.take(np.arange(at, at + n)) if len(same) > 1 else grid)
                S[s.rows, b] = torch.from_numpy(sc[part])
                OFF[s.rows, b] = torch.from_numpy(off[part])
                INV[s.rows, b] = torch.from_numpy(inv[part])
                at += n
        c1 = c0 + CHUNK
        Wc, Uc = W[:, c0:c1], U[c0:c1, c0:c1]
        err = torch.empty(R, CHUNK)
        for i in range(CHUNK):
            j = c0 + i
            w = Wc[:, i]
            t = (w - OFF[:, j]) * INV[:, j]
            lv = torch.clamp(torch.round(t), lo, hi)
            for s in nonuniform:
                lvl = torch.from_numpy(s.qt.fit_levels)
                lv[s.rows] = lvl[torch.bucketize(t[s.rows], mids[id(s)])]
            e = (w - (lv * S[:, j] + OFF[:, j])) / Uc[i, i]
            if i + 1 < CHUNK:
                Wc[:, i + 1 :].addr_(e, Uc[i, i + 1 :], alpha=-1)
            err[:, i], LV[:, j] = e, lv
        if c1 < cols:
            W[:, c1:].addmm_(err, U[c0:c1, c1:], alpha=-1)
    return [_finish(s, LV[s.rows].numpy()) for s in specs]


def _finish(s: _Part, levels: np.ndarray) -> Rounded:
    """Chosen levels -> codes; grids -> one grid in row-major block order; exact decoded values."""
    qt = s.qt
    rows, cols = levels.shape
    codes = np.searchsorted(qt.levels, levels).astype(np.uint8)  # levels are ascending and exact

    def merge(parts: list[np.ndarray]) -> np.ndarray:
        a = np.stack(parts, axis=1)  # [rows, n_blocks, ...]
        return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])

    grid = Grid(
        merge([g.scale for g in s.grids]),
        merge([g.offset for g in s.grids]),
        {k: merge([g.fields[k] for g in s.grids]) for k in s.grids[0].fields},
    )
    blocks = codes.reshape(-1, qt.block)
    return Rounded(qt.pack(blocks, grid).reshape(rows, -1), qt.values(blocks, grid).reshape(rows, cols))
