"""Drift of a device group: is it time to learn? A pure verdict over the group's drift alerts.

    group_drift(group, members, alerts, min_fraction, hours) -> GroupDrift
        ``members``   the group's unrevoked device ids
        ``alerts``    device id -> reasons of its latest drift alert in the window (devices whose
                      drift monitor compared a window with its reference and raised an alert)
        flagged       at least one member alerted and the alerted share is >= ``min_fraction``

The control plane answers ``GET /v1/admin/drift?group=G`` with it (``fleet.routes.telemetry``), and
``edgegen learn start --on-drift`` starts the federated run for the group only when it is flagged.
The alerts themselves come from each device's ``DriftMonitor`` (``drift.monitor``). No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GroupDrift", "group_drift"]


@dataclass(frozen=True)
class GroupDrift:
    group: str
    devices: int  # unrevoked members
    drifted: tuple[str, ...]  # members with a drift alert in the window, sorted
    reasons: Mapping[str, str]  # drifted member -> its latest alert's reasons
    min_fraction: float  # share of members that must have alerted
    hours: float  # the window, back from now

    @property
    def fraction(self) -> float:
        return len(self.drifted) / self.devices if self.devices else 0.0

    @property
    def flagged(self) -> bool:
        return bool(self.drifted) and self.fraction >= self.min_fraction

    def summary(self) -> str:
        """One line for an operator or a scheduler's log."""
        seen = f"{len(self.drifted)}/{self.devices} devices of group {self.group!r} raised a drift alert " \
               f"in the last {self.hours:g} h"
        if self.flagged:
            return f"drift flagged: {seen}"
        need = "" if not self.drifted else f" (needs {self.min_fraction:.0%})"
        return f"no drift flagged: {seen}{need}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": dict(self.reasons), "drifted": list(self.drifted),
                "fraction": self.fraction, "flagged": self.flagged, "summary": self.summary()}


def group_drift(group: str, members: Iterable[str], alerts: Mapping[str, str], *, min_fraction: float = 0.0,
                hours: float = 24.0) -> GroupDrift:
    """The group's verdict; alerts from devices outside ``members`` are ignored. ``0 <= min_fraction <= 1``
    (0: one alerted device is enough). Raises ``ValueError`` for a fraction outside that range."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], not {min_fraction}")
    members = sorted(set(members))
    drifted = tuple(d for d in members if d in alerts)
    return GroupDrift(group=group, devices=len(members), drifted=drifted,
                      reasons={d: alerts[d] for d in drifted}, min_fraction=min_fraction, hours=hours)
