"""Label-free quality and drift signals on the device.

    signals   per-request features (prompt length and character/letter statistics, mean output
              token log-probability)
    stats     PSI, Jensen-Shannon divergence, two-sample Kolmogorov-Smirnov (plain Python)
    monitor   reference window captured when a model version starts, tumbling windows compared
              with it, a ``DriftReport`` per window
"""

from __future__ import annotations

from edgegen.drift.monitor import DriftMonitor, DriftReport, DriftThresholds, Window, compare
from edgegen.drift.signals import Signals, request_signals

__all__ = ["DriftMonitor", "DriftReport", "DriftThresholds", "Window", "compare", "Signals",
           "request_signals"]
