"""Honest speed figures on a shared machine: interleaved rounds, median and spread, same-round ratios,
idle cores only, and a plain "noisy" verdict.

    idle_cores(cores, load)            cores the machine leaves free (at least 1): threads to use
    Spread.of(samples)                 median, low, high, coefficient of variation (CV) of one figure
    ratios(base, other)                per-round other/base, summarised as a Spread (same rounds only)
    Noise(...)                         noisy when any figure's CV exceeds ``cv_threshold`` or the load
                                       average before the run exceeded the cores the run left free
    supported(ratio, noise)            True when a difference is real: not noisy and the ratio's whole
                                       range lies on one side of 1
    median_interval(samples, level)    a distribution-free confidence interval for the median (order
                                       statistics): what many rounds of a noisy figure can still conclude
    interleave(labels, measure, rounds) runs measure(label) as A B C A B C ...: a slow spell of the
                                       machine hits every variant alike

Every speed figure edgegen prints goes through these (``bench``, ``demo``, the report and its plot).
Why: with 2 threads on 2 cores, llama.cpp's threads spin at a barrier and collapse when another process
takes one core, so one run can be 70x off; medians of interleaved rounds and ratios taken within a
round are what the field uses to compare on noisy machines (llama.cpp's ``llama-bench`` reports mean
and standard deviation over repetitions for the same reason). Pure apart from ``load_average``.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

CV_THRESHOLD = 0.10  # a figure whose rounds vary by more than 10% (stdev/mean) is not a figure


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not already busy: ``cores`` minus the load average, rounded, at least 1."""
    cores = cores or os.cpu_count() or 1
    load = load_average() if load is None else load
    return max(1, min(cores, cores - int(round(load))))


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    cv: float  # population stdev / mean over the rounds; 0 for one round
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            raise ValueError("no samples")
        xs = [float(x) for x in samples]
        mean = statistics.fmean(xs)
        cv = statistics.pstdev(xs) / mean if len(xs) > 1 and mean else 0.0
        return cls(statistics.median(xs), min(xs), max(xs), cv, len(xs))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self, fmt: str = ".1f") -> str:
        """``12.3 [11.9-12.8]`` (median [low-high])."""
        return f"{self.median:{fmt}} [{self.low:{fmt}}-{self.high:{fmt}}]"


def ratios(base: Sequence[float], other: Sequence[float]) -> Spread:
    """other/base round by round (both lists in round order, same length)."""
    if len(base) != len(other):
        raise ValueError("ratios need the same rounds for both variants")
    return Spread.of([o / b for b, o in zip(base, other) if b])


@dataclass(frozen=True)
class Noise:
    load_before: float
    threads: int
    cores: int
    max_cv: float
    cv_threshold: float = CV_THRESHOLD

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.max_cv > self.cv_threshold:
            out.append(f"rounds vary by up to {self.max_cv:.0%} (CV above {self.cv_threshold:.0%})")
        free = self.cores - self.threads
        if self.load_before > max(free, 0) + 0.5:
            out.append(f"load average {self.load_before:.2f} before the run, with {self.threads} of "
                       f"{self.cores} cores in use by the benchmark")
        return out

    @property
    def noisy(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "noisy": self.noisy, "reasons": self.reasons}


def supported(ratio: Spread, noise: Noise) -> bool:
    """Whether "faster" or "slower" may be said: a quiet machine and every round agreeing on the side."""
    return not noise.noisy and ratio.n >= 2 and (ratio.low > 1.0 or ratio.high < 1.0)


@dataclass(frozen=True)
class MedianInterval:
    """``low`` and ``high`` bound the median of the distribution the rounds came from with probability
    ``coverage`` (>= the level asked for, or the whole range's own coverage when ``n`` is too small)."""

    median: float
    low: float
    high: float
    coverage: float
    ranks: tuple[int, int]  # 1-based order statistics used as bounds
    n: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.median:{fmt}} [{self.low:{fmt}}-{self.high:{fmt}}, {self.coverage:.0%}]"


def median_interval(samples: Sequence[float], level: float = 0.95) -> MedianInterval:
    """Distribution-free confidence interval for the median of ``samples`` (independent rounds).

    The k-th smallest and k-th largest of n values bracket the true median with probability
    1 - 2 P(B <= k - 1), B ~ Binomial(n, 1/2), whatever the distribution (the sign-test interval:
    Conover, "Practical Nonparametric Statistics", 3rd ed., 1999, section 3.2). The largest k whose
    coverage reaches ``level`` is used; below n = 6 no k reaches 95% and the interval is the whole
    range with its own (lower) coverage, which ``coverage`` reports. Where the whole range of rounds
    is too wide to say a ratio is above a threshold, this can still say the median is, once there are
    enough rounds. Raises ValueError for no samples or a level outside (0, 1).
    """
    if not samples:
        raise ValueError("no samples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    xs = sorted(float(x) for x in samples)
    n = len(xs)

    def coverage(k: int) -> float:
        tail = sum(math.comb(n, i) for i in range(k)) / 2**n  # P(B <= k - 1)
        return 1.0 - 2.0 * tail

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return MedianInterval(statistics.median(xs), xs[k - 1], xs[n - k], coverage(k), (k, n + 1 - k), n)


def williams_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` variants, one per round, cycled: a Williams design (Williams 1949, "Experimental
    designs balanced for the estimation of residual effects of treatments", Aust. J. Sci. Res. A 2).

    Every variant takes every position equally often and follows every other variant equally often
    (once per cycle of ``n`` orders for even ``n``, twice per ``2n`` for odd), so whatever a variant
    leaves behind (cache contents, memory traffic, clock state) is spread over all of them. A plain
    rotation (A B C, B C A, C A B) gives every position but keeps each variant's neighbour fixed.
    Returns lists of indices 0..n-1; one order ``[0]`` for ``n`` = 1.
    """
    if n < 1:
        raise ValueError("no variants")
    if n == 1:
        return [[0]]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return rows


def interleave(labels: Sequence[str], measure: Callable[[str], dict[str, float]], rounds: int
               ) -> dict[str, dict[str, list[float]]]:
    """{label: {figure: [round 1, round 2, ...]}} from ``measure(label)`` called A B C A B C ..."""
    out: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    for _ in range(rounds):
        for label in labels:
            for figure, value in measure(label).items():
                out[label].setdefault(figure, []).append(float(value))
    return out
