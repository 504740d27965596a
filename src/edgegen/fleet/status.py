"""A device's status, derived from the latest facts, with its reason (pure; no I/O).

    device_status(facts) -> Status      one word an operator can act on, and why

The agent reports events (installed, refused, failed...) and the version it runs; a report is
history, not state. What a device *is* follows from the newest facts together:

    revoked     the control plane refuses its credential
    current     it runs the version it should run (whatever failed before: history)
    failed      its newest report is a failure about the version it should run (the reason is the
                device's, e.g. ``HealthCheckError``); it keeps running what it ran
    updating    it runs another version than it should, with no failure about the desired one yet
    waiting     nothing is released to it yet (publishing alone ships nothing)
    offline     not heard from in ``offline_after`` (shown instead of current/updating)
    new         enrolled, never reported

A failure about a version the device is no longer meant to run (say, a refused rollback to an older
version number) does not make it ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum


class DeviceState(str, Enum):
    REVOKED = "revoked"
    CURRENT = "current"
    FAILED = "failed"
    UPDATING = "updating"
    WAITING = "waiting"
    OFFLINE = "offline"
    NEW = "new"


@dataclass(frozen=True)
class LastReport:
    """The device's newest report (``DeviceEvent``): kind, success, the version it was about."""

    kind: str
    ok: bool
    version: int | None
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class DeviceFacts:
    active_version: int | None
    desired_version: int | None
    revoked: bool
    last_seen_at: datetime | None
    last_report: LastReport | None
    now: datetime
    revoked_reason: str | None = None


@dataclass(frozen=True)
class Status:
    state: DeviceState
    reason: str


OFFLINE_AFTER = timedelta(minutes=5)


def device_status(f: DeviceFacts, offline_after: timedelta = OFFLINE_AFTER) -> Status:
    if f.revoked:
        return Status(DeviceState.REVOKED, f"revoked: {f.revoked_reason}" if f.revoked_reason else "revoked")
    if f.last_seen_at is None and f.last_report is None:
        return Status(DeviceState.NEW, "enrolled, not heard from yet")
    seen = f.last_seen_at or (f.last_report.at if f.last_report else None)
    quiet = seen is not None and f.now - seen > offline_after
    last = f.last_report
    if f.desired_version is None:
        base = Status(DeviceState.WAITING, "no version released to it yet (publish ships nothing: "
                                           "start a rollout or release with --to all --now)")
    elif f.active_version == f.desired_version:
        base = Status(DeviceState.CURRENT, f"runs v{f.active_version}, the version it should run")
    elif last is not None and not last.ok and last.version == f.desired_version:
        base = Status(DeviceState.FAILED, f"v{f.desired_version} failed on it ({last.kind}): "
                                          f"{last.reason or 'no reason given'}; runs v{f.active_version}")
    else:
        have = f"v{f.active_version}" if f.active_version is not None else "nothing"
        base = Status(DeviceState.UPDATING, f"runs {have}, should run v{f.desired_version}")
    if quiet and base.state is not DeviceState.FAILED:
        ago = int((f.now - seen).total_seconds()) if seen else 0
        return Status(DeviceState.OFFLINE, f"not heard from for {ago}s; last known: {base.reason}")
    return base
