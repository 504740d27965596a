"""Every decision of the pure rollout logic, driven by values (no store, no clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegen.errors import InvalidRolloutError, RolloutStateError, UserInputError
from edgegen.fleet.rollout import (
    Action,
    Baseline,
    DeviceHealth,
    Gate,
    GateMetric,
    NoTraffic,
    Rollout,
    RolloutState,
    abort,
    apply,
    decide,
    desired_version,
    held_versions,
    parse_stages,
    pause,
    percentile,
    rank_devices,
    resume,
    stage_members,
    stage_size,
)

DEVICES = tuple(f"dev-{i:02d}" for i in range(10))


def make(**kw) -> Rollout:
    base = dict(id=1, model="smol", version=2, previous_version=1, group="all", stages=(10, 50, 100),
                devices=DEVICES, gates=(Gate(GateMetric.UPDATE_FAILURE_RATE, 0.0),
                                        Gate(GateMetric.ERROR_RATE, 0.1),
                                        Gate(GateMetric.P95_LATENCY_MS, 500.0)))
    base.update(kw)
    return Rollout(**base)


def healthy(dev: str, **kw) -> DeviceHealth:
    base = dict(device_id=dev, on_target=True, update_failed=False, requests=10, errors=0,
                latencies_ms=(100.0,) * 10)
    base.update(kw)
    return DeviceHealth(**base)


# ---- parsing ----------------------------------------------------------------------------------


def test_parse_stages() -> None:
    assert parse_stages("10,50,100") == (10, 50, 100)
    assert parse_stages([100]) == (100,)
    for bad in ("", "10,50", "50,10,100", "0,100", "10,10,100", "ten,100", "10,150"):
        with pytest.raises(InvalidRolloutError):
            parse_stages(bad)
    assert issubclass(InvalidRolloutError, UserInputError)


def test_parse_gate() -> None:
    g = Gate.parse("p95_latency_ms<800@3")
    assert g == Gate(GateMetric.P95_LATENCY_MS, 800.0, 3)
    assert Gate.parse(str(g)) == g
    assert Gate.parse("error_rate <= 0.05") == Gate(GateMetric.ERROR_RATE, 0.05, 1)
    for bad in ("latency<3", "error_rate>0.1", "error_rate<", "error_rate<0.1@0", "error_rate<nan"):
        with pytest.raises(InvalidRolloutError):
            Gate.parse(bad)


# ---- membership -------------------------------------------------------------------------------


def test_stage_sizes_for_ten_devices() -> None:
    assert [stage_size(10, p) for p in (10, 50, 100)] == [1, 5, 10]
    assert stage_size(3, 10) == 1 and stage_size(0, 50) == 0 and stage_size(7, 100) == 7


def test_membership_is_deterministic_and_independent_of_order() -> None:
    a = stage_members(DEVICES, "salt", 50)
    b = stage_members(list(reversed(DEVICES)), "salt", 50)
    assert a == b and len(a) == 5
    assert stage_members(DEVICES, "other-salt", 50) != a  # another rollout shuffles differently


@given(st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=40), st.text(max_size=8))
def test_stages_are_nested(devices: set[str], salt: str) -> None:
    previous: set[str] = set()
    for pct in (1, 5, 25, 50, 100):
        members = set(stage_members(devices, salt, pct))
        assert previous <= members
        previous = members
    assert previous == devices
    assert rank_devices(devices, salt) == rank_devices(sorted(devices), salt)


# ---- decisions --------------------------------------------------------------------------------


def test_hold_until_the_stage_has_settled() -> None:
    r = make()
    (canary,) = r.members()
    waiting = DeviceHealth(canary, on_target=False, update_failed=False)
    d = decide(r, [waiting], now=10.0)
    assert d.action is Action.HOLD and "settled" in d.reason


def test_hold_while_gates_lack_reports() -> None:
    r = make()
    (canary,) = r.members()
    d = decide(r, [healthy(canary, requests=0, latencies_ms=())], now=10.0)
    assert d.action is Action.HOLD and "waiting for reports" in d.reason


def test_min_devices_is_capped_at_stage_size() -> None:
    r = make(gates=(Gate(GateMetric.ERROR_RATE, 0.1, min_devices=3),))
    (canary,) = r.members()
    d = decide(r, [healthy(canary)], now=10.0)
    assert d.action is Action.ADVANCE
    r50 = replace(r, stage_index=1)
    members = r50.members()
    d = decide(r50, [healthy(m) if i < 2 else healthy(m, requests=0) for i, m in enumerate(members)], 10.0)
    assert d.action is Action.HOLD  # 2 of 3 needed devices have reported
    d = decide(r50, [healthy(m) for m in members], 10.0)
    assert d.action is Action.ADVANCE


def test_hold_while_baking() -> None:
    r = make(bake_s=60.0, stage_started_at=100.0)
    (canary,) = r.members()
    assert decide(r, [healthy(canary)], now=130.0).action is Action.HOLD
    assert decide(r, [healthy(canary)], now=161.0).action is Action.ADVANCE


def test_advance_then_complete() -> None:
    r = make()
    steps = ((1, Action.ADVANCE), (5, Action.ADVANCE), (10, Action.COMPLETE))
    for t, (expected_size, expected) in enumerate(steps):
        members = r.members()
        assert len(members) == expected_size
        d = decide(r, [healthy(m) for m in members], now=float(t))
        assert d.action is expected, d.reason
        r = apply(r, d, now=float(t))
    assert r.state is RolloutState.COMPLETED
    assert all(r.target_for(dev) == 2 for dev in DEVICES)


def test_update_failure_halts() -> None:
    r = make()
    (canary,) = r.members()
    d = decide(r, [DeviceHealth(canary, on_target=False, update_failed=True)], now=1.0)
    assert d.action is Action.HALT and "update_failure_rate=1" in d.reason
    r = apply(r, d, now=1.0)
    assert r.state is RolloutState.HALTED
    assert r.target_for(canary, active_version=1) == 1  # never installed it: stays where it was


def test_error_rate_breach_halts() -> None:
    r = make()
    (canary,) = r.members()
    d = decide(r, [healthy(canary, requests=10, errors=2)], now=1.0)
    assert d.action is Action.HALT and "error_rate" in d.reason


def test_latency_breach_halts_on_pooled_p95() -> None:
    r = replace(make(), stage_index=1)
    members = r.members()
    slow = [healthy(m, latencies_ms=(100.0,) * 18 + (900.0, 900.0)) for m in members]
    assert decide(r, slow, 1.0).action is Action.HALT  # 10 of 100 pooled samples are slow: p95 = 900
    fine = [healthy(m, latencies_ms=(100.0,) * 19 + (900.0,)) for m in members]
    assert decide(r, fine, 1.0).action is Action.ADVANCE  # 5 of 100: p95 = 100


def test_breach_needs_min_devices() -> None:
    r = replace(make(gates=(Gate(GateMetric.ERROR_RATE, 0.1, min_devices=3),)), stage_index=1)
    members = r.members()
    one_bad = [healthy(members[0], errors=5)] + [healthy(m, requests=0) for m in members[1:]]
    assert decide(r, one_bad, 1.0).action is Action.HOLD
    three = [healthy(m, errors=5) if i < 3 else healthy(m, requests=0) for i, m in enumerate(members)]
    assert decide(r, three, 1.0).action is Action.HALT


def test_quality_gate_against_baseline() -> None:
    r = make(gates=(Gate(GateMetric.LOGPROB_DROP, 0.3),))
    (canary,) = r.members()
    dev = healthy(canary, logprob_sum=-1.5 * 10, logprob_n=10)
    assert decide(r, [dev], 1.0, Baseline(mean_logprob=-1.0)).action is Action.HALT  # dropped 0.5
    assert decide(r, [dev], 1.0, Baseline(mean_logprob=-1.4)).action is Action.ADVANCE  # dropped 0.1
    assert decide(r, [dev], 1.0, Baseline()).action is Action.HOLD  # no baseline: cannot judge


def test_latency_ratio_gate_against_the_previous_version() -> None:
    r = make(gates=(Gate(GateMetric.P95_LATENCY_RATIO, 3.0),))
    (canary,) = r.members()
    slow = healthy(canary, latencies_ms=(1000.0,) * 20)
    assert decide(r, [slow], 1.0, Baseline(p95_latency_ms=200.0)).action is Action.HALT  # 5x slower
    assert decide(r, [slow], 1.0, Baseline(p95_latency_ms=500.0)).action is Action.ADVANCE  # 2x: tolerated
    assert decide(r, [slow], 1.0, Baseline()).action is Action.HOLD  # no baseline yet: cannot judge
    assert Gate.parse("p95_latency_ratio<3@2") == Gate(GateMetric.P95_LATENCY_RATIO, 3.0, 2)


def test_drift_gate() -> None:
    r = make(gates=(Gate(GateMetric.DRIFT_RATE, 0.0),))
    (canary,) = r.members()
    assert decide(r, [healthy(canary, drift_alert=True)], 1.0).action is Action.HALT
    assert decide(r, [healthy(canary)], 1.0).action is Action.ADVANCE


def test_heldout_perplexity_gate_takes_the_worst_device() -> None:
    """A LoRA adapter that raises any stage device's held-out perplexity by more than the threshold
    halts, however much it helps the others; a device without figures does not count as reporting."""
    r = replace(make(gates=(Gate(GateMetric.HELDOUT_PPL_RATIO, 1.02, 2),)), stage_index=1)
    members = r.members()
    better = [healthy(m, heldout_ppl_ratio=0.9) for m in members]
    assert decide(r, better, 1.0).action is Action.ADVANCE
    one_worse = better[:-1] + [healthy(members[-1], heldout_ppl_ratio=1.5)]
    d = decide(r, one_worse, 1.0)
    assert d.action is Action.HALT and "heldout_ppl_ratio=1.5" in d.reason, d.reason
    slightly = better[:-1] + [healthy(members[-1], heldout_ppl_ratio=1.01)]
    assert decide(r, slightly, 1.0).action is Action.ADVANCE  # inside the tolerance
    quiet = [healthy(m) for m in members]  # nobody measured: the no-report policy applies
    assert decide(replace(r, no_traffic_s=10.0), quiet, 1.0).action is Action.HOLD
    assert decide(replace(r, no_traffic_s=10.0, on_no_traffic=NoTraffic.HALT), quiet, 20.0).action is Action.HALT
    assert Gate.parse("heldout_ppl_ratio<1.02@2") == Gate(GateMetric.HELDOUT_PPL_RATIO, 1.02, 2)


def test_settle_fraction_lets_an_offline_device_lag() -> None:
    r = replace(make(settle_fraction=0.8), stage_index=1)
    members = r.members()
    devs = [healthy(m) for m in members[:4]] + [DeviceHealth(members[4], False, False)]
    assert decide(r, devs, 1.0).action is Action.ADVANCE
    assert decide(replace(r, settle_fraction=1.0), devs, 1.0).action is Action.HOLD


def test_a_member_that_left_the_fleet_is_not_waited_for() -> None:
    r = replace(make(), stage_index=1)
    members = r.members()
    assert decide(r, [healthy(m) for m in members[:4]], 1.0).action is Action.ADVANCE  # 5th was revoked
    assert decide(r, [], 1.0).action is Action.HOLD


def test_devices_outside_the_stage_are_ignored() -> None:
    r = make()
    (canary,) = r.members()
    outsider = next(d for d in DEVICES if d != canary)
    devs = [healthy(canary), DeviceHealth(outsider, on_target=False, update_failed=True)]
    assert decide(r, devs, 1.0).action is Action.ADVANCE


def test_percentile_nearest_rank() -> None:
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([7.0], 50) == 7.0
    with pytest.raises(ValueError):
        percentile([], 95)


# ---- operators and targets ----------------------------------------------------------------------


def test_pause_holds_and_resume_continues() -> None:
    r = pause(make())
    (canary,) = r.members()
    assert decide(r, [healthy(canary)], 1.0).action is Action.HOLD
    assert r.target_for(canary) == 2  # a pause keeps devices where they are
    with pytest.raises(RolloutStateError):
        pause(r)
    r = resume(r, now=5.0)
    assert r.state is RolloutState.RUNNING and r.stage_started_at == 5.0  # the stage is re-measured
    assert decide(r, [healthy(canary)], 6.0).action is Action.ADVANCE


def test_halt_sends_installed_devices_to_the_rollback_version() -> None:
    r = make(rollback_version=3)
    (canary,) = r.members()
    r = apply(r, decide(r, [healthy(canary, errors=9)], 1.0), 1.0)
    assert r.state is RolloutState.HALTED and "error_rate" in r.reason
    assert r.target_for(canary, active_version=2) == 3  # v3 carries v1's bytes, newer than v2
    assert r.target_for(canary, active_version=3) == 3  # already rolled back: stays
    others = [d for d in DEVICES if d != canary]
    assert {r.target_for(d, active_version=1) for d in others} == {1}  # never received v2
    with pytest.raises(RolloutStateError, match="publish a fixed version"):
        resume(r, now=50.0)


def test_halt_without_rollback_version_keeps_what_devices_run() -> None:
    r = make(rollback_version=None, state=RolloutState.HALTED)
    (canary,) = r.members()
    assert r.target_for(canary, active_version=2) == 2  # nothing newer to go to: never "downgrade"


def test_abort_rolls_back_every_touched_device() -> None:
    r = replace(make(rollback_version=3), stage_index=1)
    touched = r.members()
    r = abort(r)
    assert r.state is RolloutState.ABORTED
    assert {r.target_for(d, active_version=2) for d in touched} == {3}
    assert {r.target_for(d, active_version=1) for d in touched} == {1}
    with pytest.raises(RolloutStateError):
        resume(r, 1.0)
    with pytest.raises(RolloutStateError):
        abort(r)
    with pytest.raises(RolloutStateError):
        apply(r, decide(make(), [healthy(touched[0])], 1.0), 1.0)


def test_targets_during_a_running_rollout() -> None:
    r = replace(make(), stage_index=1)
    members = set(r.members())
    for dev in DEVICES:
        assert r.target_for(dev) == (2 if dev in members else 1)
    assert r.target_for("not-in-group") is None


def test_per_device_baseline() -> None:
    r = make(baseline={DEVICES[0]: 1, DEVICES[1]: 4})
    outsiders = [d for d in DEVICES[:2] if d not in r.members()]
    for d in outsiders:
        assert r.target_for(d) == (1 if d == DEVICES[0] else 4)


def test_desired_version_newest_rollout_wins() -> None:
    done = make(id=1, version=2, previous_version=1, rollback_version=3, state=RolloutState.COMPLETED)
    running = make(id=2, version=4, previous_version=2, rollback_version=5)
    published = [1, 2, 3, 4, 5]
    (canary,) = running.members()
    other = next(d for d in DEVICES if d != canary)
    assert desired_version(canary, 2, [done, running], published) == 4
    assert desired_version(other, 2, [done, running], published) == 2
    # a device outside every rollout gets the newest version nobody holds back: not the running
    # rollout's v4, not the rollback copies v3/v5
    assert held_versions([done, running]) == {3, 4, 5}
    assert desired_version("newcomer", None, [done, running], published) == 2
    assert desired_version("newcomer", None, [], published) == 5
    halted = replace(running, state=RolloutState.HALTED)
    assert desired_version(canary, 4, [done, halted], published) == 5
    assert desired_version(other, 2, [done, halted], published) == 2
    first = make(id=3, previous_version=None, baseline={}, state=RolloutState.ABORTED)
    assert desired_version(canary, None, [first], [2]) is None


def test_staged_model_ships_new_versions_only_through_rollouts() -> None:
    running = make(id=2, version=4, previous_version=2, rollback_version=5)
    # v6 is published but no rollout ships it: a newcomer gets the released version, not v6
    assert desired_version("newcomer", None, [running], [1, 2, 3, 4, 5, 6], staged=True, released=2) == 2
    assert desired_version("newcomer", None, [running], [1, 2, 3, 4, 5, 6]) == 6  # not staged
    assert desired_version("newcomer", None, [], [1], staged=True, released=None) is None
