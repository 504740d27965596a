"""Confidence cascade: the device answers unless its own first tokens say it is unsure, then the upstream.

    CascadePolicy(k, min_mean_logprob, max_mean_entropy, max_wait_s)   one route's thresholds
    Confidence.of(tokens)                                             mean log-probability and entropy (nats)
    decide(confidence, policy) -> Verdict                             keep the draft, or forward and why

The device generates as usual with per-token log-probabilities on; the server holds back the first ``k``
tokens (or what arrived within ``max_wait_s``, or the whole answer if it is shorter), computes their mean
log-probability of the sampled token and mean entropy of the next-token distribution, and forwards the
request upstream (discarding the local draft) when the mean log-probability is below
``min_mean_logprob`` or the mean entropy above ``max_mean_entropy``. A stream decides before its first
byte is sent, so the client sees one answer from one source. Both signals are the standard
uncertainty scores for selective prediction and LLM cascades (e.g. FrugalGPT, Chen et al. 2023, route by
a score of the cheap model's answer; mean token log-probability is the simplest such score).

Headers: ``x-edgegen-route`` (local | upstream), ``x-edgegen-fallback: low_confidence`` when forwarded,
and ``x-edgegen-confidence`` with the figures either way. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE_HEADER = "x-edgegen-confidence"


@dataclass(frozen=True)
class CascadePolicy:
    k: int = 8  # tokens the decision looks at
    min_mean_logprob: float | None = -1.5  # forward when the mean log p(sampled token) is below this
    max_mean_entropy: float | None = None  # forward when the mean entropy (nats) is above this
    max_wait_s: float = 5.0  # decide on what has arrived by then (streams wait at most this long)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.min_mean_logprob is None and self.max_mean_entropy is None:
            raise ValueError("a cascade needs min_mean_logprob or max_mean_entropy")


@dataclass(frozen=True)
class Confidence:
    mean_logprob: float
    mean_entropy: float
    n: int

    @classmethod
    def of(cls, logprobs: Sequence[float], entropies: Sequence[float]) -> Confidence:
        """From the first tokens' log p (<= 0) and entropies (>= 0, nats); no tokens is no confidence."""
        if not logprobs:
            return cls(-math.inf, math.inf, 0)
        ent = entropies or [math.inf]
        return cls(sum(logprobs) / len(logprobs), sum(ent) / len(ent), len(logprobs))

    def header(self) -> str:
        return f"mean_logprob={self.mean_logprob:.3f}; mean_entropy={self.mean_entropy:.3f}; tokens={self.n}"


@dataclass(frozen=True)
class Verdict:
    forward: bool
    reason: str  # "confident" or what fell short


def decide(c: Confidence, policy: CascadePolicy) -> Verdict:
    if c.n == 0:
        return Verdict(True, "no tokens within the wait")
    if policy.min_mean_logprob is not None and c.mean_logprob < policy.min_mean_logprob:
        return Verdict(True, f"mean logprob {c.mean_logprob:.3f} < {policy.min_mean_logprob}")
    if policy.max_mean_entropy is not None and c.mean_entropy > policy.max_mean_entropy:
        return Verdict(True, f"mean entropy {c.mean_entropy:.3f} > {policy.max_mean_entropy}")
    return Verdict(False, "confident")
