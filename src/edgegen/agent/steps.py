"""The update's steps and outcomes as enums, and the pure transitions between steps.

    Step       DOWNLOAD -> INSTALL -> HEALTH -> SWITCH -> REPORT: where a journaled update stands
    Event      what the step just learned: DONE, or INPUT_MISSING (the previous step's output is
               gone or does not verify, e.g. after a crash or a wiped download directory)
    next_step(step, event)   the next step; ``FleetError`` for a pair with no transition
    Outcome    what one poll ended with (the word ``Agent.run_once`` returns and ``status.json``
               records); ``str`` enums, so they compare equal to their JSON spelling

A step's output is the next step's input; a missing input sends the update back exactly one step,
so every step is safe to repeat after a crash. Pure: no I/O, no clock.
"""

from __future__ import annotations

from enum import Enum

from edgegen.errors import FleetError

__all__ = ["Event", "Outcome", "Step", "next_step"]


class Step(str, Enum):
    DOWNLOAD = "download"  # the transfer (full, zstd or delta) into downloads/<sha>.part
    INSTALL = "install"  # decode or reconstruct into the inactive slot, verify size + sha256
    HEALTH = "health"  # load + generate on the new slot
    SWITCH = "switch"  # active.json replaced: the commit point
    REPORT = "report"  # outcome queued in the outbox; the update is over


class Event(str, Enum):
    DONE = "done"
    INPUT_MISSING = "input_missing"


class Outcome(str, Enum):
    IDLE = "idle"  # nothing is desired
    CURRENT = "current"  # the desired version is active
    FAILED_BEFORE = "failed_before"  # the desired version failed its health check here before
    REFUSED = "refused"  # a TrustError: tampered, stale, rolled back, wrong base, ...
    SWITCHED = "switched"  # a new version is active
    HEALTH_FAILED = "health_failed"
    AUTH_REFUSED = "auth_refused"  # the control plane refused this device's credential
    ERROR = "error"  # network or server trouble: retried with backoff


_NEXT: dict[tuple[Step, Event], Step] = {
    (Step.DOWNLOAD, Event.DONE): Step.INSTALL,
    (Step.INSTALL, Event.DONE): Step.HEALTH,
    (Step.INSTALL, Event.INPUT_MISSING): Step.DOWNLOAD,
    (Step.HEALTH, Event.DONE): Step.SWITCH,
    (Step.HEALTH, Event.INPUT_MISSING): Step.INSTALL,
    (Step.SWITCH, Event.DONE): Step.REPORT,
}


def next_step(step: Step, event: Event) -> Step:
    """The step after ``step`` given ``event``; raises ``FleetError`` for an impossible pair."""
    try:
        return _NEXT[(Step(step), Event(event))]
    except (KeyError, ValueError) as exc:
        raise FleetError(f"no update step follows {step!r} on {event!r}") from exc
