"""Robust aggregation of client updates, and the poisoning attacks the tests and bench run against it.

Pure functions over updates (one list of arrays per client: its factors minus the global ones):

    mean(updates)                    FedAvg with equal weights (one device, one vote)
    clipped_mean(updates, clip)      each update scaled down to L2 norm <= clip, then averaged
    trimmed_mean(updates, beta)      per coordinate, drop the beta fraction highest and lowest, average
                                     the rest (Yin et al. 2018, arXiv:1803.01498)
    median(updates)                  per-coordinate median (same paper)
    poison(new, old, attack)         what a malicious device sends: 10x its update, or its negation

``RobustFedAvg`` is the thin Flower (legacy ``Strategy``) shell that applies one rule in
``aggregate_fit``. None of these combine with SecAgg+: each needs the individual updates (their
norms, their per-coordinate order), and SecAgg+ exists so that the server never sees them; under
SecAgg+ the server holds only the masked sum. What does combine with it is the client-side clipping
of the DP path, which bounds honest devices only (a device that skips its own clipping is bounded
only by SecAgg+'s quantization range, +-8 per coordinate). ``edgegen learn`` therefore refuses
``--robust`` together with SecAgg+ (``LearnConfigError``) instead of silently dropping one.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

__all__ = ["Attack", "RobustFedAvg", "RobustRule", "aggregate", "clipped_mean", "mean", "median", "poison",
           "trimmed_mean"]

Update = Sequence[np.ndarray]


class RobustRule(str, Enum):
    NONE = "none"
    CLIPPED_MEAN = "clipped-mean"
    TRIMMED_MEAN = "trimmed-mean"
    MEDIAN = "median"


class Attack(str, Enum):
    NONE = "none"
    SCALE10 = "scale10"  # sends 10x its honest update (model replacement, Bagdasaryan et al. 2018)
    SIGNFLIP = "signflip"  # sends the negation of its honest update


def _stack(updates: Sequence[Update], i: int) -> np.ndarray:
    return np.stack([np.asarray(u[i], dtype=np.float64) for u in updates])  # [clients, *shape]


def _check(updates: Sequence[Update]) -> None:
    if not updates:
        raise ValueError("no updates to aggregate")
    shapes = [tuple(a.shape) for a in updates[0]]
    for u in updates[1:]:
        if [tuple(a.shape) for a in u] != shapes:
            raise ValueError("updates of different shapes")


def mean(updates: Sequence[Update]) -> list[np.ndarray]:
    _check(updates)
    return [_stack(updates, i).mean(axis=0).astype(np.float32) for i in range(len(updates[0]))]


def norm(update: Update) -> float:
    return float(np.sqrt(sum(float((np.asarray(a, dtype=np.float64) ** 2).sum()) for a in update)))


def clipped_mean(updates: Sequence[Update], clip: float) -> list[np.ndarray]:
    """Mean of the updates after scaling each to L2 norm at most ``clip`` (> 0)."""
    if clip <= 0:
        raise ValueError(f"clip must be positive, not {clip}")
    scaled = []
    for u in updates:
        n = norm(u)
        f = min(1.0, clip / n) if n > 0 else 1.0
        scaled.append([np.asarray(a, dtype=np.float64) * f for a in u])
    return mean(scaled)


def trimmed_mean(updates: Sequence[Update], beta: float) -> list[np.ndarray]:
    """Per coordinate, drop ``floor(beta * n)`` values from each end, average the rest; 0 <= beta < 0.5."""
    _check(updates)
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), not {beta}")
    k = int(beta * len(updates))
    out = []
    for i in range(len(updates[0])):
        s = np.sort(_stack(updates, i), axis=0)  # [clients, *shape]
        out.append(s[k:len(updates) - k].mean(axis=0).astype(np.float32))
    return out


def median(updates: Sequence[Update]) -> list[np.ndarray]:
    _check(updates)
    return [np.median(_stack(updates, i), axis=0).astype(np.float32) for i in range(len(updates[0]))]


def aggregate(updates: Sequence[Update], rule: RobustRule, *, clip: float = 1.0, beta: float = 0.2
              ) -> list[np.ndarray]:
    if rule is RobustRule.CLIPPED_MEAN:
        return clipped_mean(updates, clip)
    if rule is RobustRule.TRIMMED_MEAN:
        return trimmed_mean(updates, beta)
    if rule is RobustRule.MEDIAN:
        return median(updates)
    return mean(updates)


def poison(new: Update, old: Update, attack: Attack) -> list[np.ndarray]:
    """The factors a malicious device sends, from its honest ``new`` ones and the global ``old`` ones."""
    if attack is Attack.NONE:
        return [np.asarray(a, dtype=np.float32) for a in new]
    f = 10.0 if attack is Attack.SCALE10 else -1.0
    return [(o + f * (n - o)).astype(np.float32) for n, o in zip(new, old)]


class RobustFedAvg(FedAvg):  # type: ignore[misc]
    """Flower's legacy ``FedAvg`` whose ``aggregate_fit`` applies ``rule`` to the clients' updates
    (their factors minus the global factors sent in that round) instead of the weighted mean."""

    def __init__(self, *, rule: RobustRule, clip: float = 1.0, beta: float = 0.2, **kw: Any) -> None:
        super().__init__(**kw)
        self.rule, self.clip, self.beta = rule, clip, beta
        self._sent: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        self._sent = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        if not results or self._sent is None:
            return None, {}
        if failures and not self.accept_failures:
            return None, {}
        old = self._sent
        updates = [[n - o for n, o in zip(parameters_to_ndarrays(fit_res.parameters), old)] for _, fit_res in results]
        step = aggregate(updates, self.rule, clip=self.clip, beta=self.beta)
        new = [(o + s).astype(np.float32) for o, s in zip(old, step)]
        metrics: dict[str, Any] = {"clients": len(results)}
        if self.fit_metrics_aggregation_fn is not None:  # as FedAvg does: the per-device fit metrics
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results]))
        return ndarrays_to_parameters(new), metrics
