"""The gate grammar, defaults that stay unless removed, and the no-traffic policy (pure decisions)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgegen.errors import InvalidRolloutError
from edgegen.fleet.rollout import (
    DEFAULT_GATES,
    Action,
    DeviceHealth,
    Gate,
    GateMetric,
    NoTraffic,
    Rollout,
    RolloutState,
    decide,
    merge_gates,
    result,
    rollback_note,
)

DEVICES = ("a", "b", "c", "d")


def test_at_means_minimum_reporting_devices() -> None:
    g = Gate.parse("error_rate<0.05@3")
    assert (g.metric, g.threshold, g.min_devices) == (GateMetric.ERROR_RATE, 0.05, 3)
    assert Gate.parse("p95_latency_ms<=800").min_devices == 1
    with pytest.raises(InvalidRolloutError, match="holds while"):
        Gate.parse("error_rate>0.05")


def test_operator_gate_replaces_only_its_metric_and_defaults_stay() -> None:
    merged = merge_gates(["p95_latency_ms<800@2"])
    assert merged[: len(DEFAULT_GATES)] == DEFAULT_GATES  # --gate does not silently drop the defaults
    assert merged[-1] == Gate(GateMetric.P95_LATENCY_MS, 800.0, 2)
    tighter = merge_gates(["error_rate<0.01@2"])
    assert [str(g) for g in tighter] == ["update_failure_rate<0@1", "error_rate<0.01@2"]


def test_metric_off_removes_a_default() -> None:
    assert [g.metric for g in merge_gates(["error_rate=off"])] == [GateMetric.UPDATE_FAILURE_RATE]
    assert merge_gates(["error_rate=off", "update_failure_rate=off"]) == ()
    with pytest.raises(InvalidRolloutError, match="unknown gate metric"):
        merge_gates(["latency=off"])


def idle(dev: str) -> DeviceHealth:
    return DeviceHealth(device_id=dev, on_target=True, update_failed=False)  # installed, no requests


def rollout(**kw) -> Rollout:
    base = dict(id=1, model="m", version=2, previous_version=1, group="all", stages=(50, 100), devices=DEVICES,
                stage_started_at=1000.0, no_traffic_s=600.0)
    base.update(kw)
    return Rollout(**base)


def test_idle_stage_waits_then_advances_on_install_health_by_default() -> None:
    r = rollout()
    stage = [idle(d) for d in r.members()]
    early = decide(r, stage, now=1000.0 + 599)
    assert early.action is Action.HOLD and "no-traffic policy 'advance' in 1s" in early.reason
    late = decide(r, stage, now=1000.0 + 600)
    assert late.action is Action.ADVANCE and "no traffic for 600s" in late.reason
    assert "install health alone" in late.reason


def test_idle_stage_with_halt_policy_halts_and_wait_policy_waits_for_ever() -> None:
    stage = [idle(d) for d in rollout().members()]
    assert decide(rollout(on_no_traffic=NoTraffic.HALT), stage, now=1e9).action is Action.HALT
    held = decide(rollout(on_no_traffic=NoTraffic.WAIT), stage, now=1e9)
    assert held.action is Action.HOLD and "no-traffic policy" not in held.reason


def test_no_traffic_policy_never_overrides_a_failed_install() -> None:
    r = rollout()
    stage = [idle(d) for d in r.members()]
    stage[0] = replace(stage[0], on_target=False, update_failed=True)
    assert decide(r, stage, now=1e9).action is Action.HALT


def test_result_is_history_and_rollback_note_names_the_reserved_version() -> None:
    done = rollout(state=RolloutState.COMPLETED, reason="stage 100% healthy, 4/4 devices on v2")
    assert result(done).startswith("completed: v2 released to all")
    assert result(rollout()) is None
    halted = rollout(state=RolloutState.HALTED, reason="gate breached", rollback_version=3)
    assert "go to v3 (v1's bytes)" in result(halted)
    note = rollback_note(rollout(rollback_version=3))
    assert "v3 reserved for rollback" in note and "refuse older version numbers" in note and "v4" in note
