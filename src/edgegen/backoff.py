"""Capped exponential backoff with jitter: the one retry delay used by every poller and uploader.

    backoff_delay(failures, base_s, cap_s)   ``min(cap, base * 2**(failures-1))`` scaled into
                                             [50%, 100%] ("equal jitter", AWS Architecture Blog,
                                             "Exponential Backoff And Jitter", 2015); 0 for 0 failures

Jitter spreads a fleet's retries after a shared outage so the control plane is not hit in lockstep.
Pure: the random draw can be passed in.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(failures: int, base_s: float = 1.0, cap_s: float = 300.0, rand: float | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (``rand`` in [0, 1): the jitter draw)."""
    if failures <= 0:
        return 0.0
    r = random.random() if rand is None else rand
    return min(cap_s, base_s * 2 ** min(failures - 1, 30)) * (0.5 + 0.5 * r)
