"""Distribution-shift statistics, written out in plain Python (no numpy/scipy needed on a device).

    quantile_edges(ref, bins)      inner bin edges at the reference's quantiles (duplicates removed)
    bin_counts(values, edges)      counts per bin; the outer bins are open-ended
    psi(expected, actual)          Population Stability Index of two count vectors (eps-smoothed):
                                   sum (a - e) * ln(a / e) over bin proportions
    js_divergence(p, q)            Jensen-Shannon divergence of two count/probability vectors, in bits
                                   (0 for equal distributions, 1 for disjoint ones)
    ks_2samp(x, y) -> (D, p)       two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value
    kolmogorov_q(lam)              P(K > lam) for the Kolmogorov distribution

Conventions follow the drift literature (Evidently, NannyML): PSI < 0.1 stable, 0.1-0.25 some
shift, > 0.25 significant. The KS p-value uses the Numerical Recipes effective-size correction,
``lam = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D`` with ``ne = n m / (n + m)``; it is approximate
for small samples (as scipy's ``method="asymp"``). Pure functions, no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

EPS = 1e-4


def quantile_edges(reference: Sequence[float], bins: int) -> list[float]:
    """Inner edges splitting ``reference`` into ``bins`` groups of (about) equal size."""
    if bins < 2 or not reference:
        return []
    ordered = sorted(reference)
    n = len(ordered)
    edges: list[float] = []
    for k in range(1, bins):
        # linear interpolation between order statistics, like numpy's default quantile
        pos = k / bins * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        edge = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return edges


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Bin ``i`` holds values in ``(edges[i-1], edges[i]]``; the first and last bins are open-ended."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_left(edges, v)] += 1
    return counts


def _proportions(counts: Sequence[float], eps: float) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("empty distribution")
    p = [max(c / total, eps) for c in counts]
    s = sum(p)
    return [x / s for x in p]


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPS) -> float:
    if len(expected) != len(actual):
        raise ValueError("psi: the two distributions need the same bins")
    e = _proportions(expected, eps)
    a = _proportions(actual, eps)
    return sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True))


def _kl_bits(p: Sequence[float], q: Sequence[float]) -> float:
    return sum(pi * math.log2(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    if len(p) != len(q):
        raise ValueError("js_divergence: the two distributions need the same support")
    sp, sq = float(sum(p)), float(sum(q))
    if sp <= 0 or sq <= 0:
        raise ValueError("empty distribution")
    pn = [x / sp for x in p]
    qn = [x / sq for x in q]
    m = [(a + b) / 2 for a, b in zip(pn, qn, strict=True)]
    return max(0.0, 0.5 * _kl_bits(pn, m) + 0.5 * _kl_bits(qn, m))


def kolmogorov_q(lam: float) -> float:
    """``P(K > lam) = 2 * sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lam^2)`` (1 for small ``lam``)."""
    if lam < 0.2:  # the series converges slowly there and the value is 1 to 1e-9
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_statistic(x: Sequence[float], y: Sequence[float]) -> float:
    """``sup |F_x - F_y|`` over the pooled sample (ties handled by stepping past equal values)."""
    if not x or not y:
        raise ValueError("ks: empty sample")
    xs, ys = sorted(x), sorted(y)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] == v:
            i += 1
        while j < m and ys[j] == v:
            j += 1
        d = max(d, abs(i / n - j / m))
    return d


def ks_2samp(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    d = ks_statistic(x, y)
    ne = len(x) * len(y) / (len(x) + len(y))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return d, kolmogorov_q(lam)
