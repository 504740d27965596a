"""The rollout loop: read each running rollout's stage health, decide (pure), apply, record.

    RolloutController(sessions, clock)   ``tick()`` evaluates every running rollout once and returns
                                         ``[(rollout_id, Decision)]``; operators' ``pause``,
                                         ``resume``, ``abort`` go through ``act``
    ControllerThread                     ``tick`` every ``interval_s`` in a daemon thread (started
                                         and stopped by the app's lifespan, see ``fleet/app.py``)

Each tick takes a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so
two control-plane processes cannot both advance one rollout. Decisions and their gate readings
are written to ``rollout_events`` for the dashboard and the CLI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgegen.errors import InvalidRolloutError
from edgegen.fleet import rollout as ro
from edgegen.fleet.rollout_db import (
    RolloutRow,
    log_event,
    mark_released,
    save,
    stage_health,
    to_domain,
)

log = logging.getLogger(__name__)


def readings_json(d: ro.Decision) -> list[dict[str, Any]]:
    return [{"gate": str(r.gate), "value": r.value, "reporting": r.reporting, "needed": r.needed,
             "breached": r.breached} for r in d.readings]


class RolloutController:
    def __init__(self, sessions: sessionmaker, clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.clock = clock
        self._lock = threading.Lock()

    def evaluate(self, session: Session, row: RolloutRow) -> ro.Decision:
        r = to_domain(row)
        now = self.clock()
        health, baseline = stage_health(session, r, row.created_at)
        decision = ro.decide(r, health, now, baseline)
        row.last_decision = (decision.reason if decision.action is ro.Action.HOLD
                             else f"{decision.action.value}: {decision.reason}")
        if decision.action is not ro.Action.HOLD:
            new = ro.apply(r, decision, now)
            save(row, new)
            if new.state is ro.RolloutState.COMPLETED:
                mark_released(session, r.model, r.version)
            log_event(session, r, decision.action.value, decision.reason, readings_json(decision))
            log.info("rollout %d (%s v%d): %s: %s", r.id, r.model, r.version, decision.action.value,
                     decision.reason)
        return decision

    def tick(self) -> list[tuple[int, ro.Decision]]:
        out = []
        with self._lock, self.sessions() as session:
            ids = list(session.scalars(select(RolloutRow.id).where(
                RolloutRow.state == ro.RolloutState.RUNNING.value).order_by(RolloutRow.id)))
            for rid in ids:
                row = session.scalars(select(RolloutRow).where(RolloutRow.id == rid).with_for_update()).first()
                if row is None or row.state != ro.RolloutState.RUNNING.value:
                    continue
                out.append((rid, self.evaluate(session, row)))
                session.commit()
        return out

    def act(self, rollout_id: int, action: str, reason: str = "") -> ro.Rollout:
        """An operator's ``pause`` / ``resume`` / ``abort``; raises ``UserInputError`` subclasses."""
        with self._lock, self.sessions() as session:
            row = session.scalars(select(RolloutRow).where(RolloutRow.id == rollout_id).with_for_update()).first()
            if row is None:
                raise InvalidRolloutError(f"there is no rollout {rollout_id}.")
            r = to_domain(row)
            now = self.clock()
            if action == "pause":
                new = ro.pause(r, reason or "paused by operator")
            elif action == "resume":
                new = ro.resume(r, now)
            elif action == "abort":
                new = ro.abort(r, reason or "aborted by operator")
            else:
                raise InvalidRolloutError(f"unknown rollout action {action!r}.")
            save(row, new)
            log_event(session, new, action, new.reason)
            session.commit()
            return new


class ControllerThread:
    def __init__(self, controller: RolloutController, interval_s: float) -> None:
        self.controller = controller
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)

    def start(self) -> ControllerThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.controller.tick()
            except Exception:  # keep the loop alive; the next tick retries from the database
                log.exception("rollout tick failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def decision_dict(d: ro.Decision) -> dict[str, Any]:
    return {"action": d.action.value, "reason": d.reason, "readings": readings_json(d)}


def rollout_dict(r: ro.Rollout) -> dict[str, Any]:
    d = asdict(r)
    d["state"] = r.state.value
    d["on_no_traffic"] = r.on_no_traffic.value
    d["rollback_note"] = ro.rollback_note(r)
    d["result"] = ro.result(r)
    d["gates"] = [str(g) for g in r.gates]
    d["percent"] = r.percent
    d["members"] = r.members()
    return d
