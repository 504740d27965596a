"""The device agent: the I/O shell around ``trust.py`` that moves a device to its desired artifact.

Each poll first checks the desired state: when the trusted root delegates a ``freshness`` role, only
the signed, unexpired, not-older-than-seen statement counts (a replayed "stay" answer is a freeze,
refused and reported). One update then walks these journaled steps (``steps.Step``, ``journal.json``),
each safe to repeat after a crash:

    verify    fetch the manifest the control plane announces; ``TrustedState.verify_manifest``; an
              adapter must name the base model installed here (``check_adapter_base``)
    download  a delta from the installed version when the control plane offers one smaller than the
              full transfer, else the zstd transfer, into ``downloads/<sha>.part`` (Range resume,
              byte cap, sha256)
    install   decode or reconstruct into the INACTIVE slot (sealed at rest with a device key),
              verify the *result's* size + sha256 against the signed manifest; an adapter gets its
              base linked in; a delta that rebuilds wrong bytes is refused and never tried again
    health    load + generate + latency bound on the new slot, base + adapter (attempts counted
              before each try, so a model that crashes the agent is given up after three)
    switch    atomic replace of ``active.json`` (the commit point), then swap the served model
    report    queue the outcome in the journal's outbox; the outbox is delivered at least once

Refusals (``TrustError``), failed health checks and credential refusals leave ``active.json`` and
the active slot untouched and are reported to the control plane (or kept locally in
``status.json`` when the control plane refuses the device itself). On start, ``recover`` checks the
active slot against its manifest and resumes or abandons an interrupted update. Failed polls back
off exponentially with jitter (``edgegen.backoff``); the transport is TLS pinned to the fleet CA
(``agent/tls.py``) whenever the control plane's URL is https.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import ssl
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
from edgegen.agent.serving import ModelServer, NullServer, slot_model_id
from edgegen.agent.slots import ActiveRecord, Slots
from edgegen.agent.steps import Event, Outcome, Step, next_step
from edgegen.agent.tls import DeviceTls
from edgegen.agent.trust import TrustedState, TrustLimits, check_adapter_base, delta_budget, download_budget
from edgegen.backoff import backoff_delay
from edgegen.delta import ENCODING as DELTA_ENCODING
from edgegen.errors import (
    AuthError,
    FleetError,
    FreezeError,
    HashMismatchError,
    InvalidProfileError,
    NotEnrolledError,
    OversizeError,
    TrustError,
    UserInputError,
)
from edgegen.fleet.signing import Manifest, canonical_json, format_time, load_envelope, parse_time
from edgegen.sealed import DeviceKey

log = logging.getLogger(__name__)

MAX_HEALTH_ATTEMPTS = 3
MAX_OUTBOX = 200


@dataclass
class AgentConfig:
    data_dir: Path
    server: str | None = None  # None: the one recorded at enrolment
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    poll_interval_s: float = 10.0
    max_backoff_s: float = 300.0  # cap on the wait between failed polls
    limits: TrustLimits = TrustLimits()
    health: HealthPolicy = HealthPolicy()
    encoding: str | None = "zstd"  # preferred transfer encoding (None: identity)
    deltas: bool = True  # ask for a delta from the installed version first (edgegen.delta)
    # the device's at-rest key file (32 bytes, 0600, created if missing), kept OUTSIDE data_dir;
    # None: models and adapters are stored in the clear
    at_rest_key: Path | None = None
    # the device profile to report (a JSON file `edgegen profile` wrote, or a shipped profile's name);
    # sent when it changes, so rollouts can select this device by profile or by fit
    profile: str | None = None


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
        self.key = DeviceKey.load_or_create(config.at_rest_key) if config.at_rest_key is not None else None
        if self.key is not None and Path(config.at_rest_key).resolve().is_relative_to(self.dir.resolve()):  # type: ignore[arg-type]
            raise UserInputError("the at-rest key must live outside the data directory it protects")
        self.slots = Slots(self.dir, key=self.key)
        self.journal = Journal(self.dir / "journal.json")
        self.server = server or NullServer()
        self.transport = transport
        self.clock = clock
        self.tls = DeviceTls(self.dir)
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

    def enroll(self, token: str, bundle: dict[str, Any] | None = None) -> str:
        """Spend the token for a credential and bootstrap trust; a no-op once enrolled.

        ``bundle`` (from ``fleet enroll-token --bundle``): the fleet CA to pin for TLS and, on a
        mutual-TLS fleet, the short-lived certificate to enrol with; over https the device then
        sends a CSR for its own new key and keeps the certificate the control plane issues."""
        if self.enrolled():
            return json.loads(self.credential_path.read_bytes())["device_id"]
        if not self.config.server:
            raise NotEnrolledError("enrolment needs --server")
        if bundle is not None:
            if bundle.get("ca_pem"):
                self.tls.pin_ca(str(bundle["ca_pem"]).encode())
            if bundle.get("enrol_cert_pem") and bundle.get("enrol_key_pem"):
                self.tls.save_enrol_cert(str(bundle["enrol_cert_pem"]).encode(), str(bundle["enrol_key_pem"]).encode())
        verify = self.tls.context(self.config.server)
        client = ControlPlaneClient(self.config.server, transport=self.transport, verify=verify,
                                    max_metadata_bytes=self.config.limits.max_metadata_bytes)
        try:
            csr = self.tls.make_csr(self.config.name) if verify is not None else None
            resp = client.enroll(token, self.config.name, self.config.labels, csr=csr)
        finally:
            client.close()
        if resp.get("device_cert_pem"):
            self.tls.save_device_cert(str(resp["device_cert_pem"]).encode())
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
            server = self.config.server or cred["server"]
            self._client = ControlPlaneClient(server, cred["credential"], transport=self.transport,
                                              verify=self.tls.context(server),
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
                upd["step"] = Step.REPORT  # the switch committed before the crash
            self._queue(state, "recovered", version=upd["version"], detail={"step": upd["step"]})
        self.journal.save(state)
        if act is not None:
            with self.slots.open_runnable(act.slot) as (model, adapter):
                self.server.start(model, adapter=adapter, model_id=slot_model_id(self.slots.dir(act.slot)))
            self._note_server()
        self._recovered = True
        return act

    # ---- one poll ------------------------------------------------------------------------------

    def run_once(self) -> Outcome:
        """Poll, and carry an update as far as it goes. Returns a short outcome word."""
        if not self._recovered:
            self.recover()
        try:
            self.flush_reports()
            try:
                self.send_profile()
            except InvalidProfileError as exc:  # a configuration mistake must not stop updates
                log.warning("device profile not reported: %s", exc)
            try:
                self.sync_root()
            except TrustError as exc:  # a forged or replayed root: no update under a doubtful root
                outcome = self._refused(self._state(), None, exc)
                self._status(outcome=outcome, reason=f"{type(exc).__name__}: {exc}")
                self.flush_reports()
                return outcome
            desired = self.client().desired()
            try:
                model, version = self.check_desired(desired)
            except TrustError as exc:  # stale (freeze), replayed or foreign answer: stay, and say so
                outcome = self._refused(self._state(), desired.get("version"), exc)
                self._status(outcome=outcome, reason=f"{type(exc).__name__}: {exc}")
                self.flush_reports()
                return outcome
            outcome = self.update_towards(model, version)
            self._status(outcome=outcome, desired=version)
        except AuthError as exc:
            log.warning("control plane refused this device: %s", exc)
            self._status(outcome=Outcome.AUTH_REFUSED, reason=str(exc))
            return Outcome.AUTH_REFUSED
        except FleetError as exc:
            log.warning("update attempt failed: %s", exc)
            self._status(outcome=Outcome.ERROR, reason=f"{type(exc).__name__}: {exc}")
            return Outcome.ERROR
        try:
            self.flush_reports()
        except FleetError as exc:
            log.warning("reports not delivered yet: %s", exc)
        return outcome

    def send_profile(self) -> bool:
        """Report ``config.profile`` if it changed since it was last accepted; True when sent. A
        profile that does not load is ``InvalidProfileError`` (a configuration error, not an update)."""
        if self.config.profile is None:
            return False
        from edgegen.plan.profile import profile_json

        data, _ = profile_json(self.config.profile)  # refuses a file with missing fields before it is sent
        digest = hashlib.sha256(canonical_json(data)).hexdigest()
        state = self._state()
        if state.get("profile_sent") == digest:
            return False
        self.client().put_profile(data)
        state["profile_sent"] = digest
        self.journal.save(state)
        return True

    def sync_root(self) -> None:
        trust = self.trust()
        for _ in range(self.config.limits.max_root_rotations):
            data = self.client().root(trust.root.version + 1)
            if data is None:
                return
            trust.update_root(data)
            atomic_write(self.root_path, trust.root_bytes, label="root")

    def check_desired(self, desired: dict[str, Any]) -> tuple[str | None, int | None]:
        """(model, version) to move to: from the signed statement when the root delegates freshness."""
        trust = self.trust()
        if not trust.requires_freshness:
            return desired.get("model"), desired.get("version")
        stmt = desired.get("statement")
        if not isinstance(stmt, dict):
            raise FreezeError("the control plane sent no signed desired state; the trusted root requires one")
        state = self._state()
        newest = state.get("desired_issued")
        ds = trust.verify_desired(canonical_json(stmt), device=self._enrolled_id(), now=self.clock(),
                                  newest_issued=parse_time(newest) if newest else None)
        if newest != format_time(ds.issued):
            state["desired_issued"] = format_time(ds.issued)
            self.journal.save(state)
        return ds.model, ds.version

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the recorded control plane (telemetry uploads share it)."""
        cred = json.loads(self.credential_path.read_bytes())
        return self.tls.context(self.config.server or cred["server"])

    def _enrolled_id(self) -> str:
        return str(json.loads(self.credential_path.read_bytes())["device_id"])

    def update_towards(self, name: str | None, version: int | None) -> Outcome:
        state = self._state()
        act = self.slots.active()
        upd = state["update"]
        if upd is not None and (upd["name"], upd["version"]) != (name, version) and upd["step"] != Step.REPORT:
            state["update"] = upd = None  # the desired version moved on: abandon the old attempt
            self._clean_downloads(keep=None)
            self.journal.save(state)
        if upd is None:
            if name is None or version is None:
                return Outcome.IDLE
            if act is not None and (act.name, act.version) == (name, version):
                return Outcome.CURRENT
            if str(version) in state["failed"].get(name, {}):
                return Outcome.FAILED_BEFORE
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
        base = self.slots.base_of(act.slot) if act is not None else None
        check_adapter_base(manifest, base[0] if base else None)
        self.slots.check_installable(manifest)  # before any byte is downloaded
        enc = self.config.encoding if self.config.encoding in manifest.transfers else None
        delta = self._delta_offer(state, manifest, act)
        upd = {"name": name, "version": version, "slot": self.slots.inactive(),
               "encoding": DELTA_ENCODING if delta else enc, "delta": delta,
               "base_slot": act.slot if manifest.is_adapter and act is not None else None,
               "envelope": data.decode(), "step": Step.DOWNLOAD, "health_attempts": 0}
        state["update"] = upd
        state.pop("last_refusal", None)
        self._queue(state, "downloading", version=version,
                    detail={"encoding": upd["encoding"], "size": manifest.size,
                            "transfer_bytes": self._transfer(upd, manifest)[0]})
        self.journal.save(state)
        crashpoint("update.started")
        return upd

    def _delta_offer(self, state: dict[str, Any], manifest: Manifest,
                     act: ActiveRecord | None) -> dict[str, Any] | None:
        """A usable delta from the active version, or None: take the full transfer."""
        if not self.config.deltas or act is None or act.name != manifest.name:
            return None
        if state.get("no_delta") == [manifest.name, manifest.version]:
            return None  # a delta for this version failed to reconstruct here: full transfer
        try:
            offer = self.client().delta(manifest.name, manifest.version, act.sha256)
            if offer is None or offer.get("base_sha256") != act.sha256 or offer.get("encoding") != DELTA_ENCODING:
                return None
            size, sha = delta_budget(manifest, offer)
        except (TrustError, FleetError) as exc:
            log.info("no delta to v%d (%s): full transfer", manifest.version, exc)
            return None
        return {"sha256": sha, "size": size, "base_sha256": act.sha256, "base_slot": act.slot}

    def _delta_base(self, upd: dict[str, Any]) -> Path | None:
        """The installed file the update's delta applies to: the active artifact (model or adapter)."""
        d = upd.get("delta")
        if not d:
            return None
        active = self.slots.slot_manifest(d["base_slot"])
        if active is None or active.sha256 != d["base_sha256"]:
            raise HashMismatchError("the delta's base is no longer installed")
        return self.slots.artifact_path(d["base_slot"], active)

    def _adapter_base(self, upd: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
        """For an adapter: the installed base model (re-checked against the manifest) and its manifest."""
        if not manifest.is_adapter:
            return {}
        base = self.slots.base_of(upd["base_slot"]) if upd.get("base_slot") else None
        check_adapter_base(manifest, base[0] if base else None)
        assert base is not None
        return {"base_model": base[1], "base_envelope": base[2]}

    def _transfer(self, upd: dict[str, Any], manifest: Manifest) -> tuple[int, str]:
        """(bytes, sha256) to download: the delta offered, or the manifest's transfer."""
        d = upd.get("delta")
        return (int(d["size"]), str(d["sha256"])) if d else download_budget(manifest, upd["encoding"])

    def _refused(self, state: dict[str, Any], version: int | None, exc: TrustError) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("update to v%s refused: %s", version, reason)
        state = self._state()  # the step may have saved progress; start from the journal again
        state["update"] = None
        self._clean_downloads(keep=None)
        if state.get("last_refusal") != [version, reason]:
            state["last_refusal"] = [version, reason]
            self._queue(state, "update_refused", ok=False, version=version, reason=reason)
        self.journal.save(state)
        return Outcome.REFUSED

    def _advance(self, state: dict[str, Any], upd: dict[str, Any]) -> Outcome:
        manifest = Manifest.from_signed(load_envelope(upd["envelope"].encode(), "manifest")["signed"])
        while True:
            step = Step(upd["step"])
            t0 = time.perf_counter()
            if step is Step.DOWNLOAD:
                size, sha = self._transfer(upd, manifest)
                download(self.client().http, self.client().blob_url(sha), self._part(sha), size=size, sha256=sha,
                         what=f"{upd['encoding'] or 'identity'} transfer of v{manifest.version}")
                upd["step"] = next_step(step, Event.DONE)
            elif step is Step.INSTALL:
                size, sha = self._transfer(upd, manifest)
                if not self._part(sha).exists():
                    upd["step"] = next_step(step, Event.INPUT_MISSING)
                    continue
                try:
                    self.slots.install(upd["slot"], self._part(sha), upd["encoding"], manifest,
                                       upd["envelope"].encode(), delta_base=self._delta_base(upd),
                                       **self._adapter_base(upd, manifest))
                except (HashMismatchError, OversizeError):
                    if upd.get("delta"):  # never try this delta again: the next attempt takes the full transfer
                        state["no_delta"] = [manifest.name, manifest.version]
                        self.journal.save(state)
                    raise
                upd["step"] = next_step(step, Event.DONE)
            elif step is Step.HEALTH:
                if self.slots.verify(upd["slot"]) != manifest:
                    upd["step"] = next_step(step, Event.INPUT_MISSING)
                    continue
                upd["health_attempts"] += 1
                self.journal.save(state)
                try:
                    if upd["health_attempts"] > MAX_HEALTH_ATTEMPTS:
                        raise HealthCheckError(f"the agent died during {MAX_HEALTH_ATTEMPTS} health checks")
                    with self.slots.open_runnable(upd["slot"]) as (model, adapter):
                        report = check_health(model, self.config.health, adapter=adapter)
                except HealthCheckError as exc:
                    return self._health_failed(state, upd, exc)
                upd["health"] = report.as_dict()
                upd["step"] = next_step(step, Event.DONE)
            elif step is Step.SWITCH:
                act = self.slots.switch(upd["slot"], manifest)
                with self.slots.open_runnable(act.slot) as (model, adapter):
                    self.server.swap(model, adapter=adapter, model_id=slot_model_id(self.slots.dir(act.slot)))
                self._note_server()
                hw = state["high_water"]
                hw[manifest.name] = max(hw.get(manifest.name, 0), manifest.version)
                upd["step"] = next_step(step, Event.DONE)
            else:  # Step.REPORT
                self._queue(state, "switched", version=manifest.version,
                            detail={"health": upd.get("health"), "timings_s": upd.get("timings", {}),
                                    "encoding": upd["encoding"], "transfer_bytes": self._transfer(upd, manifest)[0]})
                state["update"] = None
                self._clean_downloads(keep=None)
                self.journal.save(state)
                return Outcome.SWITCHED
            timings = upd.setdefault("timings", {})
            timings[step.value] = round(timings.get(step.value, 0.0) + time.perf_counter() - t0, 4)
            crashpoint(f"step.{step.value}.before_save")
            self.journal.save(state)

    def _health_failed(self, state: dict[str, Any], upd: dict[str, Any], exc: HealthCheckError) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        state["failed"].setdefault(upd["name"], {})[str(upd["version"])] = reason
        state["update"] = None
        self._queue(state, "health_failed", ok=False, version=upd["version"], reason=reason)
        self.journal.save(state)
        return Outcome.HEALTH_FAILED

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
        outcome: str = Outcome.IDLE
        failures = 0
        while not stop.is_set():
            outcome = self.run_once()
            if until is not None and until(outcome):
                break
            failures = failures + 1 if outcome in (Outcome.ERROR, Outcome.AUTH_REFUSED) else 0
            if failures:  # the control plane is unreachable or refusing: back off, with jitter
                wait = backoff_delay(failures, min(1.0, self.config.poll_interval_s), self.config.max_backoff_s)
            elif outcome == Outcome.SWITCHED:
                wait = min(1.0, self.config.poll_interval_s)
            else:
                wait = self.config.poll_interval_s
            stop.wait(wait)
        return outcome


def active_model(data_dir: Path) -> tuple[ActiveRecord, Path] | None:
    """The active record and model path (a GGUF file or an ONNX folder) of an agent data directory
    (for tools and tests)."""
    slots = Slots(data_dir)
    act = slots.active()
    return None if act is None else (act, slots.runnable(act.slot)[0])
