"""Mixed precision: measure each tensor's sensitivity per type, then choose types under a size budget.

``measure_group(...)`` rounds a sample of each tensor's rows into every candidate type (with the same GPTQ
rounding the final pass uses) and predicts the rise in mean KL divergence per token that type would
cause: 0.5 * sum_r f_r * E_r H E_r^T (+ the embedding's input-side term), f the Fisher diagonal and
H the input Hessian from calibration. Rows are importance-sampled in proportion to their Fisher
weight (mixed with uniform), and the estimate is reweighted, so it is unbiased for the full tensor.

``allocate(...)`` solves the multiple-choice knapsack "one type per tensor, total bytes <= budget,
minimise total predicted loss" greedily along each tensor's lower convex hull of (bytes, loss):
always buy the upgrade with the most predicted loss removed per byte, skipping upgrades that no
longer fit. Embeddings, attention and FFN weights compete on these numbers alone; no fixed table.
Pure logic: arrays in, choices out.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgegen.compress.blocks import FloatType, QuantType
from edgegen.compress.calibrate import TensorStats
from edgegen.compress.rounding import hessian_error, round_parts
from edgegen.errors import BudgetError


@dataclass(frozen=True)
class Candidate:
    qtype: str  # ggml type name
    nbytes: int
    loss: float  # predicted mean KL rise (nats per token)


@dataclass
class TensorChoice:
    name: str
    shape: tuple[int, int]
    candidates: list[Candidate] = field(default_factory=list)


def row_loss(E: np.ndarray, stats: TensorStats | None, rows: np.ndarray) -> np.ndarray:
    """Predicted KL rise per row for the weight error E [len(rows), cols] of rows ``rows``."""
    E = np.asarray(E, np.float32)
    if stats is None:
        return 0.5 * np.einsum("rc,rc->r", E, E, dtype=np.float64)
    out = np.zeros(len(rows))
    if stats.hessian.shape == (E.shape[1], E.shape[1]):
        f = stats.fisher[rows] if stats.fisher is not None else np.ones(len(rows))
        out += 0.5 * f * hessian_error(E, stats.hessian)
    if stats.input_fisher is not None:
        out += 0.5 * np.einsum("rc,rc->r", stats.input_fisher[rows], E * E, dtype=np.float64)
    return out


def row_proxy(W: np.ndarray, stats: TensorStats | None) -> np.ndarray:
    """A cheap guess of each row's share of the loss: Fisher weight times importance-weighted energy."""
    W = np.asarray(W, np.float32)
    if stats is None:
        return np.einsum("rc,rc->r", W, W, dtype=np.float64)
    s = np.zeros(len(W))
    if stats.fisher is not None and stats.hessian.shape == (W.shape[1], W.shape[1]):
        s += stats.fisher * ((W * W) @ np.diag(stats.hessian).astype(np.float32))
    if stats.input_fisher is not None:
        s += np.einsum("rc,rc->r", stats.input_fisher, W * W, dtype=np.float64)
    return s


def sample_rows(proxy: np.ndarray, max_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(unique row indices, weight per index) for an unbiased estimate of a sum over all rows.

    Rows are drawn with replacement with probability half uniform, half proportional to ``proxy``.
    """
    n_rows = len(proxy)
    if n_rows <= max_rows:
        return np.arange(n_rows), np.ones(n_rows)
    total = float(proxy.sum())
    p = 0.5 / n_rows + (0.5 * proxy / total if total > 0 else 0.5 / n_rows)
    p = p / p.sum()
    draws = rng.choice(n_rows, size=max_rows, replace=True, p=p)
    rows, counts = np.unique(draws, return_counts=True)
    return rows, counts / (max_rows * p[rows])


def plain_weights(stats: TensorStats | None, rows: np.ndarray | slice) -> np.ndarray | None:
    """Per-value importance for a matrix without a usable Hessian (a looked-up embedding)."""
    if stats is None or stats.input_fisher is None:
        return None
    return np.asarray(stats.input_fisher[rows], np.float32) + 1e-12


def measure_group(
    members: list[tuple[str, np.ndarray, TensorStats | None]],
    types: list[list[QuantType | FloatType]],
    *,
    hessian: np.ndarray | None,
    chol: Any = None,
    max_rows: int = 256,
    seed: int = 0,
) -> list[TensorChoice]:
    """Predicted loss and exact size of each member (name, W, stats) in each of its candidate types.

    Members share the input (so the Hessian): all their row samples in all their types are rounded
    in one GPTQ pass.
    """
    parts, part_types, part_weights, owners = [], [], [], []
    samples = []
    for k, ((_name, W, stats), cand) in enumerate(zip(members, types, strict=True)):
        rows, weight = sample_rows(row_proxy(W, stats), max_rows, np.random.default_rng([seed, k]))
        Ws = np.ascontiguousarray(W[rows], np.float32)
        samples.append((rows, weight, Ws))
        for qt in cand:
            parts.append(Ws)
            part_types.append(qt)
            part_weights.append(plain_weights(stats, rows))
            owners.append((k, qt))
    rounded = round_parts(parts, part_types, hessian=hessian, weights=part_weights, chol=chol)
    out = [TensorChoice(name, (W.shape[0], W.shape[1])) for name, W, _ in members]
    for (k, qt), r in zip(owners, rounded, strict=True):
        name, W, stats = members[k]
        rows, weight, Ws = samples[k]
        loss = float((row_loss(Ws - r.values, stats, rows) * weight).sum())
        out[k].candidates.append(Candidate(qt.name, qt.row_bytes(W.shape[1]) * W.shape[0], loss))
    return out


def _hull(cands: list[Candidate]) -> list[Candidate]:
    """Lower convex hull of (bytes, loss), from smallest to largest, dominated points removed."""
    pts = sorted(cands, key=lambda c: (c.nbytes, c.loss))
    front: list[Candidate] = []
    for c in pts:
        if front and c.loss >= front[-1].loss:
            continue  # bigger and no better
        if front and c.nbytes == front[-1].nbytes:
            front.pop()
        while len(front) >= 2:
            a, b = front[-2], front[-1]
            # b lies on or above the segment a-c: drop it
            if (b.loss - a.loss) * (c.nbytes - a.nbytes) >= (c.loss - a.loss) * (b.nbytes - a.nbytes):
                front.pop()
            else:
                break
        front.append(c)
    return front


def min_bytes(choices: list[TensorChoice]) -> int:
    return sum(min(c.nbytes for c in t.candidates) for t in choices)


def allocate(choices: list[TensorChoice], budget_bytes: int) -> dict[str, Candidate]:
    """One candidate per tensor, total bytes <= budget_bytes, greedy on predicted loss per byte."""
    hulls = {t.name: _hull(t.candidates) for t in choices}
    pick = {name: 0 for name in hulls}
    used = sum(h[0].nbytes for h in hulls.values())
    if used > budget_bytes:
        raise BudgetError(
            f"no quantization fits in {budget_bytes / 2**20:.2f} MiB of tensor data: the smallest "
            f"types need {used / 2**20:.2f} MiB"
        )
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], pick[name]
        if i + 1 < len(h):
            gain = (h[i].loss - h[i + 1].loss) / max(1, h[i + 1].nbytes - h[i].nbytes)
            heapq.heappush(heap, (-gain, name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], pick[name]
        extra = h[i + 1].nbytes - h[i].nbytes
        if used + extra <= budget_bytes:
            pick[name], used = i + 1, used + extra
            push(name)
    return {name: hulls[name][i] for name, i in pick.items()}
