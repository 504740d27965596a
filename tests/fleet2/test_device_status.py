"""A device's status comes from the latest facts with its reason; an old failure is history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edgegen.fleet.status import DeviceFacts, DeviceState, LastReport, device_status

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def facts(**kw) -> DeviceFacts:
    base = dict(active_version=2, desired_version=2, revoked=False, last_seen_at=NOW - timedelta(seconds=5),
                last_report=None, now=NOW)
    base.update(kw)
    return DeviceFacts(**base)


def refused(version: int) -> LastReport:
    return LastReport("update_refused", False, version, "RollbackError: v1 is older than v2",
                      NOW - timedelta(minutes=1))


def test_converged_device_is_current_despite_an_earlier_refusal() -> None:
    st = device_status(facts(last_report=refused(1)))
    assert st.state is DeviceState.CURRENT and "runs v2" in st.reason


def test_failure_about_the_desired_version_is_failed_with_the_devices_reason() -> None:
    st = device_status(facts(active_version=1, desired_version=2, last_report=LastReport(
        "health_failed", False, 2, "HealthCheckError: does not load", NOW)))
    assert st.state is DeviceState.FAILED and "HealthCheckError" in st.reason


def test_failure_about_a_version_no_longer_desired_is_not_failed() -> None:
    st = device_status(facts(active_version=2, desired_version=3, last_report=refused(1)))
    assert st.state is DeviceState.UPDATING and "should run v3" in st.reason


def test_nothing_released_offline_new_and_revoked() -> None:
    assert device_status(facts(active_version=None, desired_version=None)).state is DeviceState.WAITING
    assert device_status(facts(last_seen_at=NOW - timedelta(hours=1))).state is DeviceState.OFFLINE
    assert device_status(facts(last_seen_at=None, active_version=None)).state is DeviceState.NEW
    assert device_status(facts(revoked=True, revoked_reason="stolen")).reason == "revoked: stolen"
