"""Quality metrics on next-token distributions: pure numpy, no engine.

Definitions follow llama.cpp's ``llama-perplexity --kl-divergence``: a text is cut into chunks of
``n`` tokens, each evaluated from an empty context with BOS as its first token; only the second half
of each chunk is scored (positions ``n//2 .. n-2`` predicting tokens ``n//2+1 .. n-1``), so every
scored token has at least ``n//2`` tokens of context.
    perplexity       exp(mean negative log-likelihood of the actual next token)
    KL divergence    sum_v p_ref(v) * (log p_ref(v) - log p_model(v)), per scored position
    top-1 agreement  fraction of positions where argmax p_model == argmax p_ref
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: [n, V] -> [n, V]."""
    x = logits.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def chunk_positions(n_ctx: int) -> tuple[int, int]:
    """The [first, last) logit rows scored in a chunk of ``n_ctx`` tokens."""
    first = n_ctx // 2
    return first, n_ctx - 1


@dataclass
class ChunkScores:
    """Per-position values for one chunk's scored rows."""

    nll: np.ndarray  # [k] model's negative log-likelihood of the actual next token
    ref_nll: np.ndarray  # [k]
    kl: np.ndarray  # [k]
    top1_same: np.ndarray  # [k] bool


def score_chunk(model_logits: np.ndarray, ref_logits: np.ndarray, tokens: np.ndarray) -> ChunkScores:
    """Score one chunk. ``*_logits`` are [n, V] for the chunk's ``n`` tokens."""
    n = len(tokens)
    first, last = chunk_positions(n)
    lp = log_softmax(model_logits[first:last])  # [k, V]
    lq = log_softmax(ref_logits[first:last])  # [k, V]
    nxt = np.asarray(tokens[first + 1 : last + 1])  # [k]
    rows = np.arange(last - first)
    kl = (np.exp(lq) * (lq - lp)).sum(axis=-1)
    return ChunkScores(
        nll=-lp[rows, nxt],
        ref_nll=-lq[rows, nxt],
        kl=np.maximum(kl, 0.0),  # tiny negative values are float rounding
        top1_same=lp.argmax(axis=-1) == lq.argmax(axis=-1),
    )


@dataclass
class QualityAccumulator:
    """Collects ChunkScores; ``summary()`` gives the report numbers with standard errors."""

    chunks: list[ChunkScores] = field(default_factory=list)

    def add(self, scores: ChunkScores) -> None:
        self.chunks.append(scores)

    def summary(self) -> dict[str, float | int]:
        if not self.chunks:
            raise ValueError("no chunks scored")
        nll = np.concatenate([c.nll for c in self.chunks])
        ref_nll = np.concatenate([c.ref_nll for c in self.chunks])
        kl = np.concatenate([c.kl for c in self.chunks])
        same = np.concatenate([c.top1_same for c in self.chunks]).astype(np.float64)
        n = len(kl)
        se = lambda x: float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0  # noqa: E731
        return {
            "n_tokens_scored": n,
            "n_chunks": len(self.chunks),
            "ppl": float(np.exp(nll.mean())),
            "ppl_ref": float(np.exp(ref_nll.mean())),
            "ln_ppl_ratio": float((nll - ref_nll).mean()),
            "kl_mean": float(kl.mean()),
            "kl_stderr": se(kl),
            "kl_median": float(np.median(kl)),
            "kl_p99": float(np.quantile(kl, 0.99)),
            "kl_max": float(kl.max()),
            "top1_agreement": float(same.mean()),
            "top1_stderr": se(same),
        }
