"""Energy per token: measured where the platform exposes a counter, otherwise estimated, always labelled.

    EnergyCounter.open(root)   the best counter under a sysfs root: RAPL package domains
                               (``/sys/class/powercap/intel-rapl:N/energy_uj``, also AMD's RAPL via the
                               same powercap interface), else a battery's ``energy_now`` (µWh); None if neither
    counter.read()             raw counter values; ``joules_between(before, after)`` the energy between
                               two reads (RAPL wraps at ``max_energy_range_uj``; batteries count down)
    estimate_j(cpu_s, power)   CPU seconds x the profile's active power: the fallback, labelled "estimated"

Every figure leaves here with its source: ``measured-rapl``, ``measured-battery`` or
``estimated (power: <the profile's power source>)``. Reading the counters needs no privileges
beyond what the kernel grants (RAPL ``energy_uj`` is root-only on many kernels: then it is absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgegen.plan.profile import Power

SYSFS = Path("/sys/class")


@dataclass(frozen=True)
class EnergyCounter:
    source: str  # "measured-rapl" | "measured-battery"
    files: tuple[Path, ...]  # energy counters to sum (µJ for RAPL, µWh for batteries)
    wraps_at: tuple[int, ...]  # per file, the value at which the counter wraps (0: never)
    scale_j: float  # joules per counter unit

    @classmethod
    def open(cls, root: Path = SYSFS) -> EnergyCounter | None:
        rapl = sorted(p for p in (root / "powercap").glob("*rapl:[0-9]") if (p / "energy_uj").is_file())
        readable = [p for p in rapl if _readable_int(p / "energy_uj") is not None]
        if readable:
            wraps = tuple(_readable_int(p / "max_energy_range_uj") or 0 for p in readable)
            return cls("measured-rapl", tuple(p / "energy_uj" for p in readable), wraps, 1e-6)
        bats = sorted(p / "energy_now" for p in (root / "power_supply").glob("*")
                      if _readable_int(p / "energy_now") is not None)
        if bats:
            return cls("measured-battery", tuple(bats), (0,) * len(bats), 3.6e-3)  # µWh -> J
        return None

    def read(self) -> tuple[int, ...]:
        return tuple(_readable_int(f) or 0 for f in self.files)

    def joules_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Energy used between two ``read()``s; a battery counts down, RAPL counts up and wraps."""
        total = 0.0
        for b, a, wrap in zip(before, after, self.wraps_at, strict=True):
            if self.source == "measured-battery":
                total += max(0, b - a)
            else:
                total += a - b if a >= b else a + wrap - b
        return total * self.scale_j


def _readable_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def estimate_j(cpu_s: float, power: Power | None) -> tuple[float | None, str]:
    """Joules for ``cpu_s`` seconds of busy CPU at the profile's active power, with its label."""
    if power is None:
        return None, "unknown (no energy counter and the profile has no power figures)"
    return power.active_w * cpu_s, f"estimated (power: {power.source})"
