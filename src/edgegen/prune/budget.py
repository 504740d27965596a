"""How much to prune, decided by the size/speed budget: ``compress --prune auto``.

    counts = weight_counts(reader)                     what the model holds and reads per token
    auto_keep(counts, max_bytes=60 * 2**20)            -> AutoPrune(keep=0.71, ...)
    auto_keep(counts, max_decode_ms=2.1)               a speed budget (``compress.speed`` units)

The rule (pure; values in, decision out):

    Quantization pays down to a floor of ``FLOOR_BPW`` = 4.5 bits per weight, the size of the smallest
    4-bit block formats (Q4_K, Q4_0, IQ4_NL); below it only 3- and 2-bit formats remain, and there the
    error grows fast: llama.cpp's own KL-divergence table for Llama-3-8B (tools/perplexity/README.md,
    quoted in DATA.md) gives mean KLD 0.031 at Q4_K_M, 0.102 at Q3_K_M and 0.445 at Q2_K, and small
    models lose more at the same type. The issue that asked for pruning puts the same floor at ~4 bpw.
    So when a budget would push the whole model below the floor, fewer weights are the better buy:

    size   keep = (8 * (max_bytes - overhead - 4 * vectors) / FLOOR_BPW - other) / block
           (every matrix weight at the floor; ``other``, the embedding and output matrices, is not
           pruned; ``vectors``, the norms, stay F32 as the quantizer keeps them; ``overhead`` is the
           metadata plus the quantizer's worst-case alignment padding of 31 bytes per matrix)
    speed  keep = (max_decode_ms * 1e6 / ns_floor - other_read) / block
           (``ns_floor``: ``compress.speed``'s decode cost per weight of the fastest format at or above
           the floor, so the budget's weight reads per token are all spent at 4-bit quality)
    keep   min(1, size, speed); 1 means no pruning (quantization alone fits at >= the floor)

``keep`` is a fraction of the blocks' matrix weights, spent by ``PruneTarget(keep=...)`` (FFN width
first, then depth). It never goes below ``MIN_KEEP`` = 0.5: Minitron (arXiv:2407.14679) prunes at
most about half of a model's weights in one step before distilling; below that the quantizer takes
the rest (it fails with BudgetError when even its smallest types do not fit). Reads no file itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgegen.errors import PruneTargetError

FLOOR_BPW = 4.5
MIN_KEEP = 0.5


@dataclass(frozen=True)
class WeightCounts:
    block: int  # weights in the blocks' 2-D matrices (what pruning removes; all read per token)
    other: int  # weights of the other matrices (embedding, output)
    other_read: int  # of those, the ones decoding reads per token (output / tied embedding)
    overhead_bytes: int  # metadata, tokenizer and alignment padding (31 bytes per matrix, at worst)
    vectors: int = 0  # 1-D weights (norms), kept F32


@dataclass(frozen=True)
class AutoPrune:
    keep: float  # fraction of block weights to keep; 1.0: no pruning
    bound: str  # "none", "size" or "speed": what decided
    size_keep: float | None  # what the size budget alone allows (None: no size budget)
    speed_keep: float | None  # what the speed budget alone allows
    floor_bpw: float
    clamped: bool  # the budget asked for less than MIN_KEEP

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def weight_counts(reader: Any) -> WeightCounts:
    """Counts of an open GGUF (gguf-py reader) for ``auto_keep``."""
    from edgegen.formats.gguf_file import read_per_token

    names = {t.name for t in reader.tensors}
    block = other = other_read = data = vectors = matrices = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        data += int(t.n_bytes)
        if len(t.shape) < 2 or min(int(d) for d in t.shape) == 1:
            vectors += n
            continue
        matrices += 1
        if t.name.startswith("blk."):
            block += n
            continue
        other += n
        if read_per_token(t.name, names):
            other_read += n
    size = int(reader.data.size)
    return WeightCounts(block=block, other=other, other_read=other_read,
                        overhead_bytes=max(size - data, 0) + 31 * matrices, vectors=vectors)


def floor_ns_per_weight(costs: dict[str, float] | None = None, floor_bpw: float = FLOOR_BPW) -> float:
    """Decode cost per weight (``compress.speed`` units) of the fastest block format at or above the floor."""
    import gguf

    from edgegen.compress.speed import DECODE_NS_PER_WEIGHT

    table = costs or DECODE_NS_PER_WEIGHT
    ok = []
    for name, ns in table.items():
        qtype = getattr(gguf.GGMLQuantizationType, name, None)
        if qtype is None:
            continue
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        if 8 * size / block >= floor_bpw - 1e-9:
            ok.append(ns)
    if not ok:
        raise PruneTargetError(f"no block format of at least {floor_bpw} bits has a decode cost to plan with")
    return min(ok)


def auto_keep(counts: WeightCounts, *, max_bytes: int | None = None, max_decode_ms: float | None = None,
              floor_bpw: float = FLOOR_BPW, ns_floor: float | None = None, min_keep: float = MIN_KEEP) -> AutoPrune:
    """The fraction of block weights to keep under the budget (module docstring for the rule).

    Raises PruneTargetError when there is no size or speed budget to decide from, or no block weight.
    """
    if max_bytes is None and max_decode_ms is None:
        raise PruneTargetError("--prune auto needs a budget to decide from: --max-size-mib, --bpw or --speed-of")
    if counts.block <= 0:
        raise PruneTargetError("the model has no block weights to prune")
    size_keep = speed_keep = None
    if max_bytes is not None:
        affordable = 8 * (max_bytes - counts.overhead_bytes - 4 * counts.vectors) / floor_bpw  # at the floor
        size_keep = (affordable - counts.other) / counts.block
    if max_decode_ms is not None:
        ns = ns_floor if ns_floor is not None else floor_ns_per_weight(floor_bpw=floor_bpw)
        speed_keep = (max_decode_ms * 1e6 / ns - counts.other_read) / counts.block
    bounds = {k: v for k, v in (("size", size_keep), ("speed", speed_keep)) if v is not None}
    bound = min(bounds, key=lambda k: bounds[k])
    keep = bounds[bound]
    if keep >= 1.0:
        return AutoPrune(1.0, "none", size_keep, speed_keep, floor_bpw, False)
    clamped = keep < min_keep
    return AutoPrune(max(keep, min_keep), bound, size_keep, speed_keep, floor_bpw, clamped)
