"""Mixed precision: measure each tensor's sensitivity per type, then choose types under a size budget.

``measure_group(...)`` rounds a sample of each tensor's rows into every candidate type (with the same GPTQ
rounding the final pass uses) and predicts the rise in mean KL divergence per token that type would
cause: 0.5 * sum_r f_r * E_r H E_r^T (+ the embedding's input-side term), f the Fisher diagonal and
H the input Hessian from calibration. Rows are importance-sampled in proportion to their Fisher
weight (mixed with uniform), and the estimate is reweighted, so it is unbiased for the full tensor.

``allocate(...)`` solves the multiple-choice knapsack "one type per tensor, total bytes <= budget
(optionally: predicted decode and prefill times within limits), minimise total predicted loss"
greedily along each tensor's lower convex hull of (bytes, loss): always buy the upgrade with the
most predicted loss removed per byte, skipping upgrades that no longer fit. Embeddings, attention
and FFN weights compete on these numbers alone; no fixed table.
Pure logic: arrays in, choices out.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgegen.compress.blocks import FloatType, QuantType
from edgegen.compress.calibrate import TensorStats
from edgegen.compress.rounding import hessian_error, round_parts
from edgegen.errors import BudgetError

BIG = 0.05  # a tensor holding more than this share of the bytes is enumerated, not priced


@dataclass(frozen=True)
class Candidate:
    qtype: str  # ggml type name
    nbytes: int
    loss: float  # predicted mean KL rise (nats per token)
    ms: float = 0.0  # predicted decode time per token (``speed``)
    prefill_ms: float = 0.0  # predicted prefill time per prompt token (``speed``)


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
    if stats.hessian.shape == (W.shape[1], W.shape[1]):  # no Fisher: every row weighs 1 (as in row_loss)
        f = stats.fisher if stats.fisher is not None else 1.0
        s += f * ((W * W) @ np.diag(stats.hessian).astype(np.float32))
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
    p = np.full(n_rows, 0.5 / n_rows) + (0.5 * proxy / total if total > 0 else 0.5 / n_rows)
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


def _hull(cands: list[Candidate], mu: float = 0.0) -> list[Candidate]:
    """Lower convex hull of (bytes, loss + mu * ms), smallest first, dominated points removed."""

    def cost(c: Candidate) -> float:
        return c.loss + mu * c.ms

    pts = sorted(cands, key=lambda c: (c.nbytes, cost(c)))
    front: list[Candidate] = []
    for c in pts:
        if front and cost(c) >= cost(front[-1]):
            continue  # bigger and no better
        while len(front) >= 2:
            a, b = front[-2], front[-1]
            # b lies on or above the segment a-c: drop it
            if (cost(b) - cost(a)) * (c.nbytes - a.nbytes) >= (cost(c) - cost(a)) * (b.nbytes - a.nbytes):
                front.pop()
            else:
                break
        front.append(c)
    return front


PREFILL_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
LIMIT_STEPS = 12  # bisection steps on the weighted time limit (1/4096 of it)


def allocate(choices: list[TensorChoice], budget_bytes: int, max_ms: float | None = None,
             max_prefill_ms: float | None = None) -> dict[str, Candidate]:
    """One candidate per tensor, total bytes <= budget_bytes, total decode ms <= max_ms and total
    prefill ms <= max_prefill_ms (each limit optional), least predicted loss.

    Two time limits: each candidate's time becomes the weighted sum (1 - a) * ms / max_ms +
    a * prefill_ms / max_prefill_ms, for each a in ``PREFILL_WEIGHTS``. The plan solved under a
    weighted limit L (as below) meets both real limits when the bytes bind first; when the times
    bind, it sits on the line where the weighted sum is L, past one real limit unless both are met
    exactly, so L is lowered by bisection (``LIMIT_STEPS`` halvings) to the largest value whose
    plan meets both. Each feasible plan then spends the bytes, decode and prefill time it left
    (``_fill``); of these the least lossy wins. BudgetError when no direction and limit meets both.
    """
    if max_prefill_ms is None:
        return _allocate_timed(choices, budget_bytes, max_ms)
    weights = PREFILL_WEIGHTS if max_ms is not None else (1.0,)
    by_key = {(t.name, c.qtype): c for t in choices for c in t.candidates}
    slack = 1 + 1e-9

    def meets(picks: dict[str, Candidate]) -> bool:
        return ((max_ms is None or _total_ms(picks) <= max_ms * slack)
                and _total_prefill_ms(picks) <= max_prefill_ms * slack)

    best: dict[str, Candidate] | None = None
    for a in weights:
        scaled = [TensorChoice(t.name, t.shape, [
            replace(c, ms=(1 - a) * c.ms / max(max_ms or 1.0, 1e-300) + a * c.prefill_ms / max(max_prefill_ms, 1e-300))
            for c in t.candidates]) for t in choices]

        def solve(limit: float, scaled: list[TensorChoice] = scaled) -> dict[str, Candidate] | None:
            try:
                picks = _allocate_timed(scaled, budget_bytes, limit)
            except BudgetError:
                return None
            return {name: by_key[(name, c.qtype)] for name, c in picks.items()}

        found = solve(1.0)
        if found is None:
            continue  # even the weighted limit cannot be met in this direction
        if not meets(found):
            found, lo, hi = None, 0.0, 1.0
            for _ in range(LIMIT_STEPS):
                mid = (lo + hi) / 2
                picks = solve(mid)
                if picks is None:
                    lo = mid  # too tight for any plan: raise the limit
                elif meets(picks):
                    found, lo = picks, mid
                else:
                    hi = mid
            if found is None:
                continue
        found = _fill(choices, found, budget_bytes, max_ms, max_prefill_ms)
        if best is None or _total_loss(found) < _total_loss(best):
            best = found
    if best is None:
        fastest = sum(min(c.prefill_ms for c in t.candidates) for t in choices)
        raise BudgetError(
            f"no mix within {budget_bytes / 2**20:.2f} MiB of tensors meets both the decode limit "
            f"({max_ms} ms per token) and the prefill limit ({max_prefill_ms:.3f} ms per prompt token) "
            f"by the speed model (the fastest prefill types alone take {fastest:.3f} ms)"
        )
    return best


def _allocate_timed(choices: list[TensorChoice], budget_bytes: int, max_ms: float | None) -> dict[str, Candidate]:
    """One candidate per tensor, total bytes <= budget_bytes (and total ms <= max_ms), least loss.

    Bytes alone: greedy along the convex hulls. With a decode-time limit too: the few tensors big
    enough to swing the totals on their own (more than ``BIG`` of the bytes; in a small model the
    embedding) are enumerated; for each setting the rest is solved by Lagrangian relaxation (time
    priced at mu loss units per ms, mu the smallest price that meets the limit, by bisection),
    then leftover bytes and time are spent by a greedy fill.
    """
    if max_ms is None:
        return _allocate(choices, budget_bytes, 0.0)
    max_ms += 1e-9 * max(1.0, abs(max_ms))  # sums in another order must not fail on rounding
    total = sum(max(c.nbytes for c in t.candidates) for t in choices)
    big = sorted((t for t in choices if max(c.nbytes for c in t.candidates) > BIG * total),
                 key=lambda t: -max(c.nbytes for c in t.candidates))[:2]
    rest = [t for t in choices if t not in big]
    best: dict[str, Candidate] | None = None
    for combo in itertools.product(*[t.candidates for t in big]):
        fixed_bytes, fixed_ms = sum(c.nbytes for c in combo), sum(c.ms for c in combo)
        if fixed_bytes > budget_bytes or fixed_ms > max_ms:
            continue
        try:
            picks = _lagrange(rest, budget_bytes - fixed_bytes, max_ms - fixed_ms)
        except BudgetError:
            continue
        picks = _fill(rest, picks, budget_bytes - fixed_bytes, max_ms - fixed_ms)
        picks.update({t.name: c for t, c in zip(big, combo, strict=True)})
        if best is None or _total_loss(picks) < _total_loss(best):
            best = picks
    if best is None:
        fastest = sum(min(c.ms for c in t.candidates) for t in choices)
        raise BudgetError(
            f"no mix within {budget_bytes / 2**20:.2f} MiB of tensors decodes within {max_ms:.3f} ms per "
            f"token by the speed model (the fastest types alone take {fastest:.3f} ms)"
        )
    return best


def _lagrange(choices: list[TensorChoice], budget_bytes: int, max_ms: float) -> dict[str, Candidate]:
    picks = _allocate(choices, budget_bytes, 0.0)
    if _total_ms(picks) <= max_ms:
        return picks
    hi = 1e-6
    while _total_ms(_allocate(choices, budget_bytes, hi)) > max_ms:
        hi *= 4
        if hi > 1e6:
            raise BudgetError("too slow")
    lo = hi / 4
    for _ in range(30):
        mid = (lo + hi) / 2
        if _total_ms(_allocate(choices, budget_bytes, mid)) > max_ms:
            lo = mid
        else:
            hi = mid
    return _allocate(choices, budget_bytes, hi)


def _fill(choices: list[TensorChoice], picks: dict[str, Candidate], budget_bytes: int,
          max_ms: float | None, max_prefill_ms: float | None = None) -> dict[str, Candidate]:
    """Spend what is left of every budget (bytes, and decode / prefill time where limited):
    repeatedly take the switch that removes most loss per share of the remaining resources, while
    one fits."""
    picks = dict(picks)
    limits = [(lambda c: c.nbytes, budget_bytes)]
    if max_ms is not None:
        limits.append((lambda c: c.ms, max_ms))
    if max_prefill_ms is not None:
        limits.append((lambda c: c.prefill_ms, max_prefill_ms))
    while True:
        left = [limit - sum(cost(c) for c in picks.values()) for cost, limit in limits]
        best, best_score = None, 0.0
        for t in choices:
            cur = picks[t.name]
            for c in t.candidates:
                gain = cur.loss - c.loss
                if gain <= 0:
                    continue
                deltas = [cost(c) - cost(cur) for cost, _ in limits]
                if any(d > room + 1e-12 * max(abs(room), 1.0) for d, room in zip(deltas, left, strict=True)):
                    continue
                use = sum(max(d, 0) / max(room, 1e-12) for d, room in zip(deltas, left, strict=True))
                score = gain / use if use > 0 else float("inf")
                if score > best_score:
                    best, best_score = (t.name, c), score
        if best is None:
            return picks
        picks[best[0]] = best[1]


def _total_loss(picks: dict[str, Candidate]) -> float:
    return sum(c.loss for c in picks.values())


def _total_ms(picks: dict[str, Candidate]) -> float:
    return sum(c.ms for c in picks.values())


def _total_prefill_ms(picks: dict[str, Candidate]) -> float:
    return sum(c.prefill_ms for c in picks.values())


def _allocate(choices: list[TensorChoice], budget_bytes: int, mu: float) -> dict[str, Candidate]:
    """Greedy along each tensor's hull: buy the upgrade removing most cost per byte while it fits."""
    hulls = {t.name: _hull(t.candidates, mu) for t in choices}
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
            gain = (h[i].loss + mu * h[i].ms - h[i + 1].loss - mu * h[i + 1].ms)
            heapq.heappush(heap, (-gain / max(1, h[i + 1].nbytes - h[i].nbytes), name))

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
