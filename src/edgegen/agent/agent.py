"""The device agent: the I/O shell around ``trust.py`` that moves a device to its desired model.

One update walks these journaled steps (``journal.json``), each safe to repeat after a crash:

    verify    fetch the manifest the control plane announces; ``TrustedState.verify_manifest``
    download  the zstd transfer into ``downloads/<sha>.part`` (Range resume, byte cap, sha256)
    install   decode into the INACTIVE slot, verify size + sha256, then write the slot's manifest
    health    load + generate + latency bound on the new slot (attempts counted before each try,
              so a model that crashes the agent is given up after three)
    switch    atomic replace of ``active.json`` (the commit point), then swap the served model
    report    queue the outcome in the journal's outbox; the outbox is delivered at least once

Refusals (``TrustError``), failed health checks and credential refusals leave ``active.json`` and
the active slot untouched and are reported to the control plane (or kept locally in
``status.json`` when the control plane refuses the device itself). On start, ``recover`` checks the
active slot against its manifest and resumes or abandons an interrupted update.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from edgegen.agent.client import ControlPlaneClient
from edgegen.agent.download import download
from edgegen.agent.health import HealthCheckError, HealthPolicy, check_health
from edgegen.agent.journal import Journal, atomic_write, crashpoint
from edgegen.agent.serving import ModelServer, NullServer
from edgegen.agent.slots import ActiveRecord, Slots
from edgegen.agent.trust import TrustedState, TrustLimits, download_budget
from edgegen.errors import AuthError, FleetError, TrustError, UserInputError
from edgegen.fleet.signing import Manifest, canonical_json, load_envelope

log = logging.getLogger(__name__)

MAX_HEALTH_ATTEMPTS = 3
MAX_OUTBOX = 200


class NotEnrolledError(UserInputError):
    """The data directory holds no device credential and no enrolment token was given."""


@dataclass
class AgentConfig:
    data_dir: Path
    server: str | None = None  # None: the one recorded at enrolment
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    poll_interval_s: float = 10.0
    limits: TrustLimits = TrustLimits()
    health: HealthPolicy = HealthPolicy()
    encoding: str | None = "zstd"  # preferred transfer encoding (None: identity)


def parse_pin(token: str) -> str | None:
    parts = token.strip().split(".")
    return parts[2] if len(parts) == 3 else None


class Agent:
    def __init__(self, config: AgentConfig, *, server: ModelServer | None = None,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.dir = Path(config.data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.slots = Slots(self.dir)
        self.journal = Journal(self.dir / "journal.json")
        self.server = server or NullServer()
        self.transport = transport
        self.clock = clock
        self._client: ControlPlaneClient | None = None
        self._trust: TrustedState | None = None
        self._recovered = False

    # ---- enrolment and credentials -----------------------------------------------------------

    @property
    def credential_path(self) -> Path:
        return self.dir / "credential.json"

    @property
    def root_path(self) -> Path:
        return self.dir / "trust" / "root.json"

    def enrolled(self) -> bool:
        return self.credential_path.exists() and self.root_path.exists()

    def enroll(self, token: str) -> str:
        """Spend the token for a credential and bootstrap trust; a no-op once enrolled."""
        if self.enrolled():
            return json.loads(self.credential_path.read_bytes())["device_id"]
        if not self.config.server:
            raise NotEnrolledError("enrolment needs --server")
        client = ControlPlaneClient(self.config.server, transport=self.transport,
                                    max_metadata_bytes=self.config.limits.max_metadata_bytes)
        try:
            resp = client.enroll(token, self.config.name, self.config.labels)
        finally:
            client.close()
        chain = [canonical_json(env) for env in resp.get("root_chain", [])]
        trust = TrustedState.bootstrap(chain, parse_pin(token), self.config.limits)
        atomic_write(self.root_path, trust.root_bytes, label="root")
        cred = {"server": self.config.server, "device_id": resp["device_id"], "credential": resp["credential"]}
        atomic_write(self.credential_path, json.dumps(cred).encode(), 0o600, label="credential")
        return resp["device_id"]

    def client(self) -> ControlPlaneClient:
        if self._client is None:
            if not self.enrolled():
                raise NotEnrolledError(f"{self.dir} holds no device credential: pass --enroll-token")
            cred = json.loads(self.credential_path.read_bytes())
            self._client = ControlPlaneClient(self.config.server or cred["server"], cred["credential"],
                                              transport=self.transport,
                                              max_metadata_bytes=self.config.limits.max_metadata_bytes)
        return self._client

    def trust(self) -> TrustedState:
        if self._trust is None:
            if not self.enrolled():
                raise NotEnrolledError(f"{self.dir} holds no device credential: pass --enroll-token")
            self._trust = TrustedState.from_trusted_root(self.root_path.read_bytes(), self.config.limits)
        return self._trust

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.server.stop()

    # ---- journal helpers -----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = self.journal.load()
        state.setdefault("update", None)
        state.setdefault("failed", {})
        state.setdefault("high_water", {})
        state.setdefault("outbox", [])
        return state

    def _queue(self, state: dict[str, Any], kind: str, *, ok: bool = True, version: int | None = None,
               reason: str | None = None, detail: dict[str, Any] | None = None) -> None:
        act = self.slots.active()
        state["outbox"] = (state["outbox"] + [{
            "kind": kind, "ok": ok, "version": version, "reason": reason, "detail": detail or {},
            "active_version": act.version if act else None, "active_sha256": act.sha256 if act else None,
            "status": "ok" if ok else "error",
        }])[-MAX_OUTBOX:]

    def _status(self, **fields: Any) -> None:
        fields["at"] = self.clock().isoformat()
        atomic_write(self.dir / "status.json", json.dumps(fields, sort_keys=True).encode(), label="status")

    def flush_reports(self) -> int:
        state = self._state()
        sent = 0
        while state["outbox"]:
            crashpoint("report.before_send")
            self.client().report(state["outbox"][0])
            state["outbox"] = state["outbox"][1:]
            self.journal.save(state)
            sent += 1
        return sent

    # ---- recovery ------------------------------------------------------------------------------

    def recover(self) -> ActiveRecord | None:
        """After a (re)start: the active slot must verify; an interrupted update resumes or ends."""
        state = self._state()
        act = self.slots.active()
        if act is not None and self.slots.verify(act.slot) is None:
            other = "b" if act.slot == "a" else "a"
            m = self.slots.verify(other)
            reason = f"active slot {act.slot} does not match its manifest"
            if m is not None:
                act = self.slots.switch(other, m)
                reason += f"; fell back to slot {other} (v{m.version})"
            self._queue(state, "recovered", ok=False, reason=reason)
        upd = state["update"]
        if upd is not None:
            if act is not None and upd["slot"] == act.slot and upd["version"] != act.version:
                state["update"] = None  # cannot happen by construction; never touch the active slot
            elif act is not None and (act.name, act.version) == (upd["name"], upd["version"]):
                upd["step"] = "report"  # the switch committed before the crash
            self._queue(state, "recovered", version=upd["version"], detail={"step": upd["step"]})
        self.journal.save(state)
        if act is not None:
            self.server.start(self.slots.model_path(act.slot))
            self._note_server()
        self._recovered = True
        return act

    # ---- one poll ------------------------------------------------------------------------------

    def run_once(self) -> str:
        """Poll, and carry an update as far as it goes. Returns a short outcome word."""
        if not self._recovered:
            self.recover()
        try:
            self.flush_reports()
            try:
                self.sync_root()
            except TrustError as exc:  # a forged or replayed root: no update under a doubtful root
                outcome = self._refused(self._state(), None, exc)
                self._status(outcome=outcome, reason=f"{type(exc).__name__}: {exc}")
                self.flush_reports()
                return outcome
            desired = self.client().desired()
            outcome = self.update_towards(desired.get("model"), desired.get("version"))
            self._status(outcome=outcome, desired=desired.get("version"))
        except AuthError as exc:
            log.warning("control plane refused this device: %s", exc)
            self._status(outcome="auth_refused", reason=str(exc))
            return "auth_refused"
        except FleetError as exc:
            log.warning("update attempt failed: %s", exc)
            self._status(outcome="error", reason=f"{type(exc).__name__}: {exc}")
            return "error"
        try:
            self.flush_reports()
        except FleetError as exc:
            log.warning("reports not delivered yet: %s", exc)
        return outcome

    def sync_root(self) -> None:
        trust = self.trust()
        for _ in range(self.config.limits.max_root_rotations):
            data = self.client().root(trust.root.version + 1)
            if data is None:
                return
            trust.update_root(data)
            atomic_write(self.root_path, trust.root_bytes, label="root")

    def update_towards(self, name: str | None, version: int | None) -> str:
        state = self._state()
        act = self.slots.active()
        upd = state["update"]
        if upd is not None and (upd["name"], upd["version"]) != (name, version) and upd["step"] != "report":
            state["update"] = upd = None  # the desired version moved on: abandon the old attempt
            self._clean_downloads(keep=None)
            self.journal.save(state)
        if upd is None:
            if name is None or version is None:
                return "idle"
            if act is not None and (act.name, act.version) == (name, version):
                return "current"
            if str(version) in state["failed"].get(name, {}):
                return "failed_before"
            try:
                upd = self._start(state, name, version, act)
            except TrustError as exc:
                return self._refused(state, version, exc)
        try:
            return self._advance(state, upd)
        except TrustError as exc:
            return self._refused(state, upd["version"], exc)

    def _start(self, state: dict[str, Any], name: str, version: int, act: ActiveRecord | None) -> dict[str, Any]:
        data = self.client().manifest(name, version)
        manifest = self.trust().verify_manifest(
            data, name=name, now=self.clock(), active_version=act.version if act and act.name == name else None,
            expected_version=version, min_version=state["high_water"].get(name))
        enc = self.config.encoding if self.config.encoding in manifest.transfers else None
        upd = {"name": name, "version": version, "slot": self.slots.inactive(), "encoding": enc,
               "envelope": data.decode(), "step": "download", "health_attempts": 0}
        state["update"] = upd
        state.pop("last_refusal", None)
        self._queue(state, "downloading", version=version, detail={"encoding": enc, "size": manifest.size})
        self.journal.save(state)
        crashpoint("update.started")
        return upd

    def _refused(self, state: dict[str, Any], version: int | None, exc: TrustError) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("update to v%s refused: %s", version, reason)
        state = self._state()  # the step may have saved progress; start from the journal again
        state["update"] = None
        self._clean_downloads(keep=None)
        if state.get("last_refusal") != [version, reason]:
            state["last_refusal"] = [version, reason]
            self._queue(state, "update_refused", ok=False, version=version, reason=reason)
        self.journal.save(state)
        return "refused"

    def _advance(self, state: dict[str, Any], upd: dict[str, Any]) -> str:
        manifest = Manifest.from_signed(load_envelope(upd["envelope"].encode(), "manifest")["signed"])
        while True:
            step = upd["step"]
            t0 = time.perf_counter()
            if step == "download":
                size, sha = download_budget(manifest, upd["encoding"])
                download(self.client().http, self.client().blob_url(sha), self._part(sha), size=size, sha256=sha,
                         what=f"{upd['encoding'] or 'identity'} transfer of v{manifest.version}")
                upd["step"] = "install"
            elif step == "install":
                size, sha = download_budget(manifest, upd["encoding"])
                if not self._part(sha).exists():
                    upd["step"] = "download"
                    continue
                self.slots.install(upd["slot"], self._part(sha), upd["encoding"], manifest, upd["envelope"].encode())
                upd["step"] = "health"
            elif step == "health":
                if self.slots.verify(upd["slot"]) != manifest:
                    upd["step"] = "install"
                    continue
                upd["health_attempts"] += 1
                self.journal.save(state)
                try:
                    if upd["health_attempts"] > MAX_HEALTH_ATTEMPTS:
                        raise HealthCheckError(f"the agent died during {MAX_HEALTH_ATTEMPTS} health checks")
                    report = check_health(self.slots.model_path(upd["slot"]), self.config.health)
                except HealthCheckError as exc:
                    return self._health_failed(state, upd, exc)
                upd["health"] = report.as_dict()
                upd["step"] = "switch"
            elif step == "switch":
                act = self.slots.switch(upd["slot"], manifest)
                self.server.swap(self.slots.model_path(act.slot))
                self._note_server()
                hw = state["high_water"]
                hw[manifest.name] = max(hw.get(manifest.name, 0), manifest.version)
                upd["step"] = "report"
            elif step == "report":
                self._queue(state, "switched", version=manifest.version,
                            detail={"health": upd.get("health"), "timings_s": upd.get("timings", {}),
                                    "encoding": upd["encoding"]})
                state["update"] = None
                self._clean_downloads(keep=None)
                self.journal.save(state)
                return "switched"
            else:  # pragma: no cover - journal written by a newer agent
                raise FleetError(f"unknown journal step {step!r}")
            timings = upd.setdefault("timings", {})
            timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - t0, 4)
            crashpoint(f"step.{step}.before_save")
            self.journal.save(state)

    def _health_failed(self, state: dict[str, Any], upd: dict[str, Any], exc: HealthCheckError) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        state["failed"].setdefault(upd["name"], {})[str(upd["version"])] = reason
        state["update"] = None
        self._queue(state, "health_failed", ok=False, version=upd["version"], reason=reason)
        self.journal.save(state)
        return "health_failed"

    def _note_server(self) -> None:
        if self.server.url:
            atomic_write(self.dir / "serve.json", json.dumps({"url": self.server.url}).encode(), label="serve")

    def _part(self, sha: str) -> Path:
        return self.dir / "downloads" / f"{sha}.part"

    def _clean_downloads(self, keep: str | None) -> None:
        d = self.dir / "downloads"
        if d.exists():
            for p in d.iterdir():
                if keep is None or p.name != f"{keep}.part":
                    p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, until: Callable[[str], bool] | None = None) -> str:
        """Poll until ``stop`` is set (or ``until(outcome)`` is true); returns the last outcome."""
        stop = stop or threading.Event()
        outcome = "idle"
        while not stop.is_set():
            outcome = self.run_once()
            if until is not None and until(outcome):
                break
            busy = outcome in ("switched", "error")
            stop.wait(min(1.0, self.config.poll_interval_s) if busy else self.config.poll_interval_s)
        return outcome


def active_model(data_dir: Path) -> tuple[ActiveRecord, Path] | None:
    """The active record and model path of an agent data directory (for tools and tests)."""
    slots = Slots(data_dir)
    act = slots.active()
    return None if act is None else (act, slots.model_path(act.slot))
