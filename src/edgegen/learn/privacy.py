"""Differential privacy of a federated run: the (epsilon, delta) an accountant gives for its noise.

    DpConfig(noise_multiplier, clipping_norm, delta)   on by default in ``edgegen learn``
    epsilon(noise_multiplier, sample_rate, rounds, delta) -> float

The mechanism is Flower's central DP with client-side fixed clipping: each device clips its update
(new factors minus the global ones) to L2 norm ``clipping_norm`` (``fixedclipping_mod``) before SecAgg+
masks it, and the server adds Gaussian noise of standard deviation ``noise_multiplier *
clipping_norm`` to the *sum* (``DifferentialPrivacyClientSideFixedClipping``, which divides by the
number of sampled clients as it averages). The guarantee is client-level: neighbouring federations
differ in one device's entire text. The accountant is opacus' RDP accountant (Mironov 2017, "Renyi
Differential Privacy", arXiv:1702.07476; the sampled Gaussian of Mironov, Talwar and Zhang 2019,
arXiv:1908.10530), composed over the rounds with the fraction of devices sampled per round as the
sampling rate. With every device in every round (rate 1) there is no amplification by sampling, so
a handful of devices gets a large epsilon: the number is reported as it is, never rounded down.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DpConfig", "epsilon"]


@dataclass(frozen=True)
class DpConfig:
    noise_multiplier: float = 1.0
    clipping_norm: float = 0.1  # L2 norm of one device's update of the LoRA factors per round
    delta: float = 1e-5

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` releases of the sampled Gaussian mechanism (opacus RDP).

    ``noise_multiplier``: noise std over the clipping norm (> 0); ``sample_rate`` in (0, 1]: the
    fraction of devices per round. Returns ``inf`` for no noise."""
    if noise_multiplier <= 0 or rounds <= 0:
        return float("inf") if rounds > 0 else 0.0
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(rounds))]
    return float(acc.get_epsilon(delta=float(delta)))
