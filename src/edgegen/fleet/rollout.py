"""Staged rollouts: the rollout state and the pure decisions taken on it.

A rollout moves one model version to the devices of one group in stages (e.g. 10, 50, 100 percent).
Which devices belong to a stage is a deterministic function of the device set snapshotted when the
rollout was created: devices are ranked by ``sha256(salt:device_id)`` and stage *k* is the first
``ceil(n * percent_k / 100)`` of them, so stages are nested and a device never leaves a stage.

Each evaluation turns (rollout, per-device health of the current stage, now) into a ``Decision``:

    HOLD      wait: not enough devices settled or reporting yet, bake time not over, or not running
    ADVANCE   every gate holds with enough reporting devices: open the next stage
    COMPLETE  the same at the last stage: the version becomes the group's version
    HALT      a gate is breached: stop for good, and send the devices that installed the version to
              the rollout's *rollback version*

Devices accept only versions strictly greater than the one they run (anti-rollback, Fleet I), so
going back means installing a newer version carrying the old bytes: the operator's tooling signs
that rollback version when it creates the rollout (the control plane holds no signing key), and a
halt or an abort points every touched device at it. Devices that never installed the rollout's
version go back to what they ran before (their ``baseline``). A halted rollout cannot resume
(its touched devices would have to go "back" to an older version number); publish a fixed version.

Gates are thresholds on update failure rate, error rate, p95 latency (absolute, or as a ratio to the
previous version's p95 on the same group: robust to the load of the moment), quality (drop of the
mean output log-probability against the previous version's baseline; for a LoRA adapter, the worst
device's held-out perplexity ratio with/without it, measured on the device at install) and drift
alerts, each needing a minimum number of reporting devices (capped at the stage size, so a 1-device
canary can pass).
The gate grammar (``Gate.parse``, ``merge_gates``)::

    GATE     := METRIC OP THRESHOLD ["@" DEVICES]    e.g. error_rate<0.05@3, p95_latency_ms<=800
              | METRIC "=off"                         drop that metric's default gate
    OP       := "<" | "<="                            both read "holds while value <= THRESHOLD"
    DEVICES  := how many stage devices must report before the gate may pass (default 1; capped at
                the stage size). ``@1``: one reporting device is enough.

A gate given by the operator replaces the default gate *of the same metric* only; the other
defaults stay unless removed with ``METRIC=off``.

No traffic: request-based gates (error rate, latency, log-prob, drift) need requests, and the
held-out perplexity gate needs devices with opted-in text (``REPORT_METRICS``). A stage
whose devices have all installed (the agent's post-install health check is a synthetic request on
the new version, and a failure there counts as a failed update) but that saw too few requests
after ``no_traffic_s`` follows the rollout's ``NoTraffic`` policy: ``advance`` on install health
alone (the default; the decision says so), ``halt``, or ``wait`` for real traffic for ever.
Time windows are the control plane's (stage start by its clock, reports by receipt time), so device
clock skew cannot move a report in or out of a stage.

Operators pause, resume and abort. Every model is *staged*: a newly published version reaches no
device until a rollout ships it (or the operator releases it to all devices at once; or opts the
model into live publishing). Everything here takes values and returns values; the store,
clock and telemetry queries live in ``fleet/rollout_db.py``. This module does no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from edgegen.errors import InvalidRolloutError, RolloutStateError


class RolloutState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"  # by an operator; devices keep what they have, no stage opens
    HALTED = "halted"  # by a breached gate; touched devices go to the rollback version
    COMPLETED = "completed"
    ABORTED = "aborted"  # by an operator; touched devices go to the rollback version


ACTIVE_STATES = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})
ROLLED_BACK_STATES = frozenset({RolloutState.HALTED, RolloutState.ABORTED})


class GateMetric(str, Enum):
    UPDATE_FAILURE_RATE = "update_failure_rate"  # failed installs / settled devices
    ERROR_RATE = "error_rate"  # failed requests / requests, on the new version
    P95_LATENCY_MS = "p95_latency_ms"  # pooled p95 of request latency on the new version
    P95_LATENCY_RATIO = "p95_latency_ratio"  # that p95 over the previous version's p95 (same fleet, same load)
    LOGPROB_DROP = "logprob_drop"  # baseline mean token log-prob minus the new one (nats)
    DRIFT_RATE = "drift_rate"  # devices with a drift alert / devices on the new version
    # the worst device's perplexity with the new LoRA adapter over its perplexity without it, each
    # device on its own held-out text (measured on the device at install: ``agent.quality``)
    HELDOUT_PPL_RATIO = "heldout_ppl_ratio"


class NoTraffic(str, Enum):
    """What a settled stage does when request-based gates still lack reports after ``no_traffic_s``."""

    ADVANCE = "advance"  # on install health alone (failed installs still halt)
    HALT = "halt"
    WAIT = "wait"  # hold until enough devices report requests


TRAFFIC_METRICS = frozenset({GateMetric.ERROR_RATE, GateMetric.P95_LATENCY_MS, GateMetric.P95_LATENCY_RATIO,
                             GateMetric.LOGPROB_DROP, GateMetric.DRIFT_RATE})
# gates that need more than an install to report: requests, or a device's own evaluation (a device
# without opted-in text never reports one); the no-traffic policy applies to all of them
REPORT_METRICS = TRAFFIC_METRICS | {GateMetric.HELDOUT_PPL_RATIO}


class Action(str, Enum):
    HOLD = "hold"
    ADVANCE = "advance"
    COMPLETE = "complete"
    HALT = "halt"


_GATE_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|<)\s*([0-9.eE+-]+)\s*(?:@\s*(\d+))?\s*$")
_OFF_RE = re.compile(r"^\s*([a-z0-9_]+)\s*=\s*off\s*$")
GATE_GRAMMAR = "METRIC<THRESHOLD[@DEVICES] or METRIC=off"



@dataclass(frozen=True)
class Gate:
    """Holds while ``value <= threshold`` (``<`` and ``<=`` are read alike); needs ``min_devices``."""

    metric: GateMetric
    threshold: float
    min_devices: int = 1

    @classmethod
    def parse(cls, text: str) -> Gate:
        """``"p95_latency_ms<800@3"``: metric, threshold, optional minimum of reporting devices."""
        m = _GATE_RE.match(text)
        if not m:
            raise InvalidRolloutError(
                f"gate {text!r} is not of the form METRIC<THRESHOLD[@DEVICES] (e.g. error_rate<0.05@2: "
                "holds while the error rate is at most 0.05, once 2 devices report).")
        try:
            metric = GateMetric(m.group(1))
        except ValueError:
            names = ", ".join(g.value for g in GateMetric)
            raise InvalidRolloutError(f"unknown gate metric {m.group(1)!r}; use one of {names}.") from None
        try:
            threshold = float(m.group(3))
        except ValueError:
            raise InvalidRolloutError(f"gate {text!r} has no numeric threshold.") from None
        min_devices = int(m.group(4)) if m.group(4) else 1
        if min_devices < 1 or not math.isfinite(threshold):
            raise InvalidRolloutError(f"gate {text!r} needs a finite threshold and at least 1 device.")
        return cls(metric, threshold, min_devices)

    def __str__(self) -> str:
        return f"{self.metric.value}<{self.threshold:g}@{self.min_devices}"


DEFAULT_GATES: tuple[Gate, ...] = (
    Gate(GateMetric.UPDATE_FAILURE_RATE, 0.0, 1),
    Gate(GateMetric.ERROR_RATE, 0.05, 1),
)


def merge_gates(specs: Iterable[str] | None, defaults: Sequence[Gate] = DEFAULT_GATES) -> tuple[Gate, ...]:
    """The defaults, with each operator gate replacing the default of its metric, ``METRIC=off``
    removing it, and new metrics appended (in the order given). Raises ``InvalidRolloutError``."""
    gates: dict[GateMetric, Gate | None] = {g.metric: g for g in defaults}
    for text in specs or ():
        off = _OFF_RE.match(text)
        if off:
            try:
                gates[GateMetric(off.group(1))] = None
            except ValueError:
                names = ", ".join(g.value for g in GateMetric)
                raise InvalidRolloutError(f"unknown gate metric {off.group(1)!r}; use one of {names}.") from None
            continue
        g = Gate.parse(text)
        gates[g.metric] = g
    return tuple(g for g in gates.values() if g is not None)


def parse_stages(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,50,100"`` -> (10, 50, 100): strictly increasing percentages ending at 100."""
    try:
        stages = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise InvalidRolloutError(f"stages {text!r} must be comma-separated whole percentages.") from None
    if not stages or stages[-1] != 100 or any(not 0 < s <= 100 for s in stages):
        raise InvalidRolloutError(f"stages {text!r} must be percentages in 1..100 ending with 100.")
    if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise InvalidRolloutError(f"stages {text!r} must be strictly increasing.")
    return stages


# ---- who is in which stage --------------------------------------------------------------------


def rank_devices(device_ids: Iterable[str], salt: str) -> list[str]:
    """The rollout order: by sha256 of ``salt:device_id`` (ties impossible in practice; id breaks them)."""
    return sorted(set(device_ids), key=lambda d: (hashlib.sha256(f"{salt}:{d}".encode()).digest(), d))


def stage_size(n_devices: int, percent: int) -> int:
    return min(n_devices, math.ceil(n_devices * percent / 100)) if n_devices else 0


def stage_members(device_ids: Iterable[str], salt: str, percent: int) -> list[str]:
    ranked = rank_devices(device_ids, salt)
    return ranked[: stage_size(len(ranked), percent)]


# ---- the rollout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    id: int
    model: str
    version: int
    previous_version: int | None  # what (most of) the group ran before
    group: str
    stages: tuple[int, ...]
    devices: tuple[str, ...]  # the group's devices when the rollout was created
    rollback_version: int | None = None  # newer than ``version``, carrying ``previous_version``'s bytes
    baseline: Mapping[str, int | None] = field(default_factory=dict)  # device -> version before
    gates: tuple[Gate, ...] = DEFAULT_GATES
    state: RolloutState = RolloutState.RUNNING
    stage_index: int = 0
    stage_started_at: float = 0.0
    bake_s: float = 0.0  # minimum time a stage must run before it may advance
    settle_fraction: float = 1.0  # share of a stage's devices that must have installed or failed
    reason: str = ""
    no_traffic_s: float = 600.0  # after this long in a settled stage without enough requests ...
    on_no_traffic: NoTraffic = NoTraffic.ADVANCE  # ... do this

    @property
    def salt(self) -> str:
        return f"{self.model}:{self.version}:{self.id}"

    @property
    def percent(self) -> int:
        return self.stages[self.stage_index]

    def members(self) -> list[str]:
        """Devices of the current stage (cumulative: they include every earlier stage)."""
        return stage_members(self.devices, self.salt, self.percent)

    def before(self, device_id: str) -> int | None:
        return self.baseline.get(device_id, self.previous_version)

    def target_for(self, device_id: str, active_version: int | None = None) -> int | None:
        """The version this rollout wants on ``device_id`` (running ``active_version``).

        None when the device is not part of the rollout. After a halt or abort, a device that runs
        the rollout's version (or anything newer) is sent to the rollback version; without one it
        keeps what it runs, since devices refuse older version numbers.
        """
        if device_id not in self.devices:
            return None
        if self.state is RolloutState.COMPLETED:
            return self.version
        if self.state in ROLLED_BACK_STATES:
            if active_version is not None and active_version >= self.version:
                return self.rollback_version if self.rollback_version is not None else active_version
            return self.before(device_id)
        return self.version if device_id in self.members() else self.before(device_id)


def result(r: Rollout) -> str | None:
    """How a rollout ended (None while it runs): history, not a live count of versions."""
    if r.state is RolloutState.RUNNING:
        return None
    if r.state is RolloutState.PAUSED:
        return f"paused at {r.percent}%: {r.reason}"
    if r.state is RolloutState.COMPLETED:
        return f"completed: v{r.version} released to {r.group} ({r.reason})"
    back = (f"devices that installed v{r.version} go to v{r.rollback_version} (v{r.previous_version}'s bytes)"
            if r.rollback_version is not None else f"devices that installed v{r.version} keep it (no rollback version)")
    return f"{r.state.value} at {r.percent}%: {r.reason}; {back}"


def rollback_note(r: Rollout) -> str:
    """Which version number the rollout reserved for going back, and why (for its output)."""
    if r.rollback_version is None:
        return (f"no rollback version reserved: if this rollout halts or is aborted, devices that installed "
                f"v{r.version} keep it (devices refuse older version numbers).")
    prev = f"v{r.previous_version}'s bytes" if r.previous_version is not None else "the previous bytes"
    return (f"v{r.rollback_version} reserved for rollback: {prev} signed as v{r.rollback_version}, because devices "
            f"refuse older version numbers. Only devices that installed v{r.version} get it, and only if "
            f"this rollout halts or is aborted; the next release must be v{r.rollback_version + 1} or newer.")


# ---- what the store observed about the stage's devices -------------------------------------------


@dataclass(frozen=True)
class DeviceHealth:
    """One stage member, as seen by the control plane since the current stage started."""

    device_id: str
    on_target: bool  # runs the rollout's version now
    update_failed: bool  # reported a failed install (download, verify, health check) of it
    requests: int = 0  # on the rollout's version, since the stage started
    errors: int = 0
    latencies_ms: tuple[float, ...] = ()
    logprob_sum: float = 0.0  # sum of per-request mean token log-probabilities
    logprob_n: int = 0
    drift_alert: bool = False
    heldout_ppl_ratio: float | None = None  # ppl(base + adapter) / ppl(base) on its held-out text

    @property
    def settled(self) -> bool:
        return self.on_target or self.update_failed


@dataclass(frozen=True)
class Baseline:
    """The previous version's figures over the same group (for relative gates)."""

    mean_logprob: float | None = None
    p95_latency_ms: float | None = None


@dataclass(frozen=True)
class GateReading:
    gate: Gate
    value: float | None  # None: nobody reported yet
    reporting: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.reporting >= self.needed and self.value is not None

    @property
    def breached(self) -> bool:
        return self.enough and self.value is not None and self.value > self.gate.threshold

    def __str__(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        limit = f"limit {self.gate.threshold:g}, {self.reporting}/{self.needed} devices"
        return f"{self.gate.metric.value}={v} ({limit})"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    readings: tuple[GateReading, ...] = field(default=())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def read_gate(gate: Gate, devices: Sequence[DeviceHealth], baseline: Baseline) -> GateReading:
    needed = max(1, min(gate.min_devices, len(devices)))
    on = [d for d in devices if d.on_target]
    value: float | None = None
    if gate.metric is GateMetric.UPDATE_FAILURE_RATE:
        settled = [d for d in devices if d.settled]
        reporting = len(settled)
        value = sum(d.update_failed for d in settled) / reporting if reporting else None
    elif gate.metric is GateMetric.ERROR_RATE:
        rep = [d for d in on if d.requests]
        reporting = len(rep)
        value = sum(d.errors for d in rep) / sum(d.requests for d in rep) if rep else None
    elif gate.metric is GateMetric.P95_LATENCY_MS:
        rep = [d for d in on if d.latencies_ms]
        reporting = len(rep)
        value = percentile([x for d in rep for x in d.latencies_ms], 95) if rep else None
    elif gate.metric is GateMetric.P95_LATENCY_RATIO:
        rep = [d for d in on if d.latencies_ms]
        reporting = len(rep)
        if rep and baseline.p95_latency_ms:
            value = percentile([x for d in rep for x in d.latencies_ms], 95) / baseline.p95_latency_ms
    elif gate.metric is GateMetric.LOGPROB_DROP:
        rep = [d for d in on if d.logprob_n]
        reporting = len(rep)
        if rep and baseline.mean_logprob is not None:
            mean = sum(d.logprob_sum for d in rep) / sum(d.logprob_n for d in rep)
            value = baseline.mean_logprob - mean
    elif gate.metric is GateMetric.DRIFT_RATE:
        reporting = len(on)
        value = sum(d.drift_alert for d in on) / reporting if reporting else None
    elif gate.metric is GateMetric.HELDOUT_PPL_RATIO:
        ratios = [d.heldout_ppl_ratio for d in on if d.heldout_ppl_ratio is not None]
        reporting = len(ratios)
        value = max(ratios) if ratios else None  # the worst device: an adapter must not hurt any of them
    else:  # pragma: no cover - exhaustive over GateMetric
        raise AssertionError(gate.metric)
    return GateReading(gate, value, reporting, needed)


def decide(rollout: Rollout, devices: Sequence[DeviceHealth], now: float,
           baseline: Baseline = Baseline()) -> Decision:
    """What to do with ``rollout`` given the health of its current stage's devices.

    ``devices`` holds one entry per stage member still in the fleet; a member without an entry
    (revoked since the rollout began) is not waited for.
    """
    if rollout.state is not RolloutState.RUNNING:
        return Decision(Action.HOLD, f"rollout is {rollout.state.value}")
    members = set(rollout.members())
    stage = [d for d in devices if d.device_id in members]
    readings = tuple(read_gate(g, stage, baseline) for g in rollout.gates)
    breached = [r for r in readings if r.breached]
    if breached:
        return Decision(Action.HALT, "gate breached: " + "; ".join(map(str, breached)), readings)
    settled = sum(d.settled for d in stage)
    # members without health (revoked or deleted since the snapshot) are no longer waited for
    need_settled = math.ceil(rollout.settle_fraction * len(stage))
    if not stage:
        return Decision(Action.HOLD, "no device of this stage is left (all revoked?)", readings)
    if settled < need_settled:
        return Decision(Action.HOLD, f"{settled}/{len(stage)} devices settled, {need_settled} needed",
                        readings)
    waiting = [r for r in readings if not r.enough]
    elapsed = now - rollout.stage_started_at
    note = ""
    if waiting:
        quiet = all(r.gate.metric in REPORT_METRICS for r in waiting)
        what = "; ".join(map(str, waiting))
        if not quiet or rollout.on_no_traffic is NoTraffic.WAIT or elapsed < rollout.no_traffic_s:
            left = ("" if not quiet or rollout.on_no_traffic is NoTraffic.WAIT else
                    f" (no-traffic policy '{rollout.on_no_traffic.value}' in {rollout.no_traffic_s - elapsed:.0f}s)")
            return Decision(Action.HOLD, f"waiting for reports: {what}{left}", readings)
        if rollout.on_no_traffic is NoTraffic.HALT:
            return Decision(Action.HALT, f"no traffic for {elapsed:.0f}s (policy: halt): {what}", readings)
        note = f"; no traffic for {elapsed:.0f}s, advanced on install health alone (policy: advance): {what}"
    if elapsed < rollout.bake_s:
        return Decision(Action.HOLD, f"baking ({elapsed:.0f}/{rollout.bake_s:g}s)", readings)
    last = rollout.stage_index == len(rollout.stages) - 1
    action = Action.COMPLETE if last else Action.ADVANCE
    on = sum(d.on_target for d in stage)
    return Decision(action, f"stage {rollout.percent}% healthy, {on}/{len(stage)} devices on v{rollout.version}{note}",
                    readings)


def apply(rollout: Rollout, decision: Decision, now: float) -> Rollout:
    """The rollout after ``decision`` (HOLD leaves it as it is)."""
    if decision.action is Action.HOLD:
        return rollout
    if rollout.state is not RolloutState.RUNNING:
        raise RolloutStateError(
            f"rollout {rollout.id} is {rollout.state.value}; it cannot {decision.action.value}."
        )
    if decision.action is Action.ADVANCE:
        return replace(rollout, stage_index=rollout.stage_index + 1, stage_started_at=now, reason="")
    if decision.action is Action.COMPLETE:
        return replace(rollout, state=RolloutState.COMPLETED, reason=decision.reason)
    return replace(rollout, state=RolloutState.HALTED, reason=decision.reason)


# ---- operators --------------------------------------------------------------------------------


def pause(rollout: Rollout, reason: str = "paused by operator") -> Rollout:
    if rollout.state is not RolloutState.RUNNING:
        raise RolloutStateError(
            f"rollout {rollout.id} is {rollout.state.value}; only a running one can pause."
        )
    return replace(rollout, state=RolloutState.PAUSED, reason=reason)


def resume(rollout: Rollout, now: float) -> Rollout:
    """Run again after an operator pause; the current stage is re-measured from ``now``."""
    if rollout.state is not RolloutState.PAUSED:
        raise RolloutStateError(
            f"rollout {rollout.id} is {rollout.state.value}; only a paused one can resume"
            + (" (a halted rollout has rolled back: publish a fixed version)." if
               rollout.state is RolloutState.HALTED else ".")
        )
    return replace(rollout, state=RolloutState.RUNNING, stage_started_at=now, reason="")


def abort(rollout: Rollout, reason: str = "aborted by operator") -> Rollout:
    if rollout.state not in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED):
        raise RolloutStateError(f"rollout {rollout.id} is {rollout.state.value}; it cannot be aborted.")
    return replace(rollout, state=RolloutState.ABORTED, reason=reason)


def held_versions(rollouts: Iterable[Rollout]) -> set[int]:
    """Versions only a rollout may hand out: unfinished targets and every rollback version."""
    held: set[int] = set()
    for r in rollouts:
        if r.state is not RolloutState.COMPLETED:
            held.add(r.version)
        if r.rollback_version is not None:
            held.add(r.rollback_version)
    return held


def desired_version(device_id: str, active_version: int | None, rollouts: Iterable[Rollout],
                    published: Iterable[int], *, staged: bool = False,
                    released: int | None = None) -> int | None:
    """The version a device should run, given one model's rollouts and published version numbers.

    The newest rollout (highest id) that includes the device decides, unless it completed (its
    version was then released, and what is released later wins). A device outside every
    rollout follows, for a *staged* model (one whose new versions only ship through rollouts), the
    ``released`` version (the last completed rollout's, or what the fleet ran when the model became
    staged); otherwise the newest published version that no rollout holds back (``held_versions``).
    """
    rollouts = list(rollouts)
    for r in sorted(rollouts, key=lambda r: r.id, reverse=True):
        if device_id in r.devices:
            if r.state is RolloutState.COMPLETED and staged:
                break  # done: its version was released; a later release or rollout supersedes it
            target = r.target_for(device_id, active_version)
            return target if target is not None else active_version
    if staged:
        return released
    held = held_versions(rollouts)
    free = [v for v in published if v not in held]
    return max(free) if free else None
