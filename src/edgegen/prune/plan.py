"""The pure core of pruning: importance scores and a target in, a prune plan out.

    Shape.of(hparams, n_ff)                   the widths and depth of a model
    PruneTarget.parse("layers=24,ffn=1024")   what to keep: any of layers, ffn, kv (KV groups)
    PruneTarget.parse("keep=0.6")             or the fraction of block weights to keep, spent on
                                              FFN width first (down to half), then on depth
    PruneTarget.parse("keep=0.6,per_layer")   the same weights, but each block's FFN width and KV
                                              groups chosen by one global importance threshold
    make_plan(importance, shape, target) -> PrunePlan

A uniform plan keeps the same FFN width and the same number of KV groups in every kept block, so the
result is still the ``llama`` architecture, which every llama.cpp build runs with its fastest kernels.
A ``per_layer`` plan spends the same totals (FFN channels and KV groups summed over the kept blocks)
where the importance is: every unit whose global score (``Importance.ffn_global`` / ``kv_global``:
what the unit adds to the residual stream, relative to the stream's size there, so scores of
different blocks compare) clears one threshold stays, the threshold the lowest that fits the totals.
Such a model is written as llama.cpp's ``deci`` architecture (per-layer ``feed_forward_length`` and
``attention.head_count[_kv]`` arrays; ``apply``). A block may lose all its KV groups (an
attention-free block, which deci runs) except the first kept one (llama.cpp takes the head size
from block 0); no block loses its whole FFN (deci then skips the block's attention too).

Widths are kept multiples of 256 where the source's were (k-quant super-blocks hold 256 values of a
row, and ffn_down's rows are n_ff long), else of 32 (the other block formats). Which units go: the
lowest-scoring (``importance``), each layer choosing its own channels and groups; blocks by lowest
Block Influence. Raises PruneTargetError for a target that keeps nothing (or more than there is).
Touches no file and no model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgegen.errors import PruneTargetError
from edgegen.prune.importance import Importance


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_embd: int
    head_dim: int

    @property
    def ffn_align(self) -> int:
        return 256 if self.n_ff % 256 == 0 else 32

    def block_params(self, n_ff: int | None = None, n_head_kv: int | None = None) -> int:
        """Weights in one block's matrices (what every decoded token reads once)."""
        ff = self.n_ff if n_ff is None else n_ff
        kv = self.n_head_kv if n_head_kv is None else n_head_kv
        heads = kv * (self.n_head // self.n_head_kv)
        attn = self.n_embd * self.head_dim * (2 * heads + 2 * kv)
        return attn + 3 * self.n_embd * ff


@dataclass(frozen=True)
class PruneTarget:
    n_layer: int | None = None
    n_ff: int | None = None
    n_head_kv: int | None = None
    keep: float | None = None  # fraction of block weights to keep (exclusive with the above)
    per_layer: bool = False  # widths per block by a global threshold (a deci GGUF) instead of uniform
    auto: bool = False  # keep decided by the compress budget (``prune.budget``), not given here

    @classmethod
    def parse(cls, spec: str) -> PruneTarget:
        """``layers=N,ffn=W,kv=G`` (any subset) or ``keep=F`` / a bare fraction ``F`` in (0, 1], or
        ``auto`` (the budget decides: ``prune.budget``); any followed by ``,per_layer`` for per-block widths."""
        words = [p.strip() for p in spec.strip().split(",") if p.strip()]
        per_layer = any(w.replace("-", "_") == "per_layer" for w in words)
        spec = ",".join(w for w in words if w.replace("-", "_") != "per_layer")
        if spec.lower() == "auto":
            return cls(auto=True, per_layer=per_layer)
        try:
            if "=" not in spec:
                return cls(keep=float(spec), per_layer=per_layer)
            parts = dict(p.split("=", 1) for p in spec.split(",") if p.strip())
        except ValueError as exc:
            raise PruneTargetError(
                f"cannot read the prune target {spec!r}: write e.g. layers=24,ffn=1024 or keep=0.6") from exc
        names = {"layers": "n_layer", "ffn": "n_ff", "kv": "n_head_kv", "keep": "keep"}
        unknown = set(parts) - set(names)
        if unknown:
            raise PruneTargetError(
                f"unknown prune target key(s) {', '.join(sorted(unknown))}; use layers, ffn, kv or keep")
        try:
            values = {names[k]: (float(v) if k == "keep" else int(v)) for k, v in parts.items()}
        except ValueError as exc:
            raise PruneTargetError(f"the prune target {spec!r} has a value that is not a number") from exc
        if "keep" in values and len(values) > 1:
            raise PruneTargetError("give either keep=F or layers/ffn/kv, not both")
        return cls(**values, per_layer=per_layer)

    def resolve(self, shape: Shape) -> Shape:
        """The kept shape; PruneTargetError when it keeps nothing or asks for more than the source has."""
        if self.auto:
            raise PruneTargetError("the prune target 'auto' is decided by a budget: use edgegen compress --prune auto "
                                   "with --max-size-mib, --bpw or --speed-of")
        if self.keep is not None:
            return _from_fraction(self.keep, shape)
        out = Shape(self.n_layer or shape.n_layer, self.n_ff or shape.n_ff, shape.n_head,
                    self.n_head_kv or shape.n_head_kv, shape.n_embd, shape.head_dim)
        for name, want, have in (("layers", self.n_layer, shape.n_layer), ("ffn", self.n_ff, shape.n_ff),
                                 ("kv", self.n_head_kv, shape.n_head_kv)):
            if want is not None and want < 1:
                raise PruneTargetError(f"the prune target removes everything: {name}={want} keeps none of {have}")
            if want is not None and want > have:
                raise PruneTargetError(f"the prune target asks for {name}={want}, but the model has {have}")
        if self.n_ff is not None and self.n_ff != shape.n_ff and out.n_ff % shape.ffn_align:
            raise PruneTargetError(
                f"ffn={out.n_ff} is not a multiple of {shape.ffn_align} (block formats need whole blocks per row)")
        group = shape.n_head // shape.n_head_kv
        return Shape(out.n_layer, out.n_ff, out.n_head_kv * group, out.n_head_kv, shape.n_embd, shape.head_dim)


def _from_fraction(keep: float, shape: Shape) -> Shape:
    if not 0.0 < keep <= 1.0:
        raise PruneTargetError(f"keep={keep} must lie in (0, 1]: keep=0 removes everything")
    a = shape.block_params(n_ff=0)  # attention weights of a block
    per_ff = 3 * shape.n_embd
    want = keep * shape.n_layer * shape.block_params()
    align = shape.ffn_align
    raw = (want / shape.n_layer - a) / per_ff  # FFN width that spends the whole fraction at full depth
    ff = shape.n_ff if raw >= shape.n_ff - 1e-6 else int(raw) // align * align
    floor = max(align, (shape.n_ff // 2) // align * align)
    n_layer = shape.n_layer
    if ff < floor:  # width alone would go past half: keep half the width, take the rest from depth
        ff = floor
        n_layer = int(want // shape.block_params(n_ff=ff))
    ff = min(ff, shape.n_ff)
    if n_layer < 1:
        raise PruneTargetError(f"keep={keep} leaves less than one block: it removes everything")
    return Shape(n_layer, ff, shape.n_head, shape.n_head_kv, shape.n_embd, shape.head_dim)


@dataclass(frozen=True)
class PrunePlan:
    """Which source units survive, in source order."""

    layers: tuple[int, ...]  # kept source blocks
    ffn: tuple[tuple[int, ...], ...]  # per kept block: kept FFN channels
    kv_groups: tuple[tuple[int, ...], ...]  # per kept block: kept KV groups (may be () when per_layer)
    source: Shape
    kept: Shape  # the kept shape; for a per-layer plan its n_ff / n_head_kv are the widest block's

    @property
    def ffn_widths(self) -> tuple[int, ...]:
        return tuple(len(f) for f in self.ffn)

    @property
    def kv_widths(self) -> tuple[int, ...]:
        return tuple(len(k) for k in self.kv_groups)

    @property
    def per_layer(self) -> bool:
        """Blocks differ in width (or some have no attention): only ``deci`` can hold it."""
        return len(set(self.ffn_widths)) > 1 or len(set(self.kv_widths)) > 1 or 0 in self.kv_widths

    def block_weights(self) -> int:
        """Weights in the kept blocks' matrices (what every decoded token reads)."""
        return sum(self.source.block_params(n_ff=f, n_head_kv=k) for f, k in zip(self.ffn_widths, self.kv_widths))

    def heads(self, i: int) -> list[int]:
        """Kept query heads of the i-th kept block (every head of every kept group)."""
        g = self.source.n_head // self.source.n_head_kv
        return [k * g + j for k in self.kv_groups[i] for j in range(g)]

    @classmethod
    def identity(cls, shape: Shape) -> PrunePlan:
        """Keep everything (rewriting a model's tensors, e.g. with trained values)."""
        return cls(layers=tuple(range(shape.n_layer)), ffn=(tuple(range(shape.n_ff)),) * shape.n_layer,
                   kv_groups=(tuple(range(shape.n_head_kv)),) * shape.n_layer, source=shape, kept=shape)

    @property
    def is_identity(self) -> bool:
        return self.kept == self.source

    def to_dict(self) -> dict:
        whole = self.source.n_layer * self.source.block_params()
        out = {"layers": list(self.layers), "ffn_width": self.kept.n_ff, "n_head_kv": self.kept.n_head_kv,
               "n_head": self.kept.n_head, "source": asdict(self.source), "kept": asdict(self.kept),
               "block_weights_kept": round(self.block_weights() / whole, 4)}
        if self.per_layer:
            out.update(per_layer=True, ffn_widths=list(self.ffn_widths), kv_groups_per_layer=list(self.kv_widths))
        return out


def make_plan(importance: Importance, shape: Shape, target: PruneTarget) -> PrunePlan:
    """Keep the top-scoring blocks, channels and KV groups that ``target`` allows.

    importance arrays must match ``shape`` ([n_layer, n_ff], [n_layer, n_head_kv], [n_layer]).
    Blocks go by ascending Block Influence (ShortGPT removes them all in one shot, as here); ties keep
    the earlier block. Within each kept block the highest-scoring channels and groups stay, in
    source order.
    """
    kept = target.resolve(shape)
    if (importance.ffn.shape != (shape.n_layer, shape.n_ff)
            or importance.kv_groups.shape != (shape.n_layer, shape.n_head_kv)):
        raise ValueError("importance scores do not match the model's shape")
    order = np.argsort(-importance.block_influence, kind="stable")  # most influential first
    layers = tuple(sorted(int(i) for i in order[: kept.n_layer]))
    if target.per_layer:
        return _per_layer_plan(importance, shape, kept, layers)
    ffn = tuple(_top(importance.ffn[i], kept.n_ff) for i in layers)
    kv = tuple(_top(importance.kv_groups[i], kept.n_head_kv) for i in layers)
    return PrunePlan(layers=layers, ffn=ffn, kv_groups=kv, source=shape, kept=kept)


def _per_layer_plan(importance: Importance, shape: Shape, kept: Shape, layers: tuple[int, ...]) -> PrunePlan:
    """The uniform plan's totals, spread over ``layers`` by one global threshold per unit kind."""
    if importance.ffn_global is None or importance.kv_global is None:
        raise ValueError("a per-layer plan needs the global importance scores (Importance.ffn_global/kv_global)")
    rows = list(layers)
    ffn_s, kv_s = importance.ffn_global[rows], importance.kv_global[rows]
    align = shape.ffn_align
    ff_floor = np.full(len(rows), align)
    kv_floor = np.zeros(len(rows), dtype=int)
    kv_floor[0] = 1  # llama.cpp reads the head size from the first block's head count
    ff = threshold_widths(ffn_s, kept.n_ff * len(rows), align, ff_floor)
    kv = threshold_widths(kv_s, kept.n_head_kv * len(rows), 1, kv_floor)
    ffn = tuple(_top(ffn_s[j], int(ff[j])) for j in range(len(rows)))
    groups = tuple(_top(kv_s[j], int(kv[j])) for j in range(len(rows)))
    wide = int(max(kv))
    widest = Shape(len(rows), int(max(ff)), wide * (shape.n_head // shape.n_head_kv), wide, shape.n_embd,
                   shape.head_dim)
    return PrunePlan(layers=layers, ffn=ffn, kv_groups=groups, source=shape, kept=widest)


def threshold_widths(scores: np.ndarray, total: int, align: int, floor: np.ndarray) -> np.ndarray:
    """Per-row widths [rows] keeping the units of ``scores`` [rows, n] above one global threshold.

    Each row's count of units above the threshold is rounded to the nearest multiple of ``align`` (a
    row that keeps all ``n`` stays whole, aligned or not) and clipped to [floor, n]; the threshold is
    the lowest whose widths sum to at most ``total`` (the floors alone may exceed it: then the floors).
    Widths never grow as the threshold rises, so a bisection over the distinct scores finds it.
    """
    n = scores.shape[1]

    def widths(tau: float) -> np.ndarray:
        count = (scores > tau).sum(1)
        rounded = np.where(count >= n, n, (count + align // 2) // align * align)  # the whole width is always allowed
        return np.clip(rounded, floor, n)

    taus = np.concatenate([[-np.inf], np.unique(scores)])
    lo, hi = 0, len(taus) - 1  # widths(taus[hi]) are the floors
    while lo < hi:
        mid = (lo + hi) // 2
        if widths(taus[mid]).sum() <= total:
            hi = mid
        else:
            lo = mid + 1
    return widths(taus[lo])


def _top(scores: np.ndarray, k: int) -> tuple[int, ...]:
    if k >= len(scores):
        return tuple(range(len(scores)))
    return tuple(sorted(int(i) for i in np.argsort(-scores, kind="stable")[:k]))
