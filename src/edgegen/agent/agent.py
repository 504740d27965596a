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
              before each try, so a model that crashes the agent is given up after three); a
              LoRA adapter is also scored on the device's held-out text when it has opted some in
              (``AgentConfig.quality``, ``agent.quality``): the figures go in the switched report
    switch    atomic replace of ``active.json`` (the commit point), then swap the served model
    report    queue the outcome in the journal's outbox; the outbox is delivered at least once

Extra LoRA adapter streams (``AgentConfig.adapters``, multi-LoRA): the desired state also names a
version for each; each stream has its own A/B slots (``<data>/adapters/<name>/``, through the same
``Slots``) and walks the same steps, one update at a time, after the model's. An extra stream must
be an adapter made for the installed base; the server serves every active adapter whose base is the
active model's, each picked by model name ``<base>+<name>``, and a failed health check or a crash
leaves that adapter's previous slot serving.

With an at-rest key (``AgentConfig.at_rest_key``), models and adapters are sealed in their slots,
``credential.json`` is sealed (``sealed.seal_value``) and the TLS key encrypted under a passphrase
derived from it; a sealed base is decrypted once into a memory file that every engine maps.

Refusals (``TrustError``), failed health checks and credential refusals leave ``active.json`` and
the active slot untouched and are reported to the control plane (or kept locally in
``status.json`` when the control plane refuses the device itself). On start, ``recover`` checks the
active slot against its manifest and resumes or abandons an interrupted update. Failed polls back
off exponentially with jitter (``edgegen.backoff``); the transport is TLS pinned to the fleet CA
(``agent/tls.py``) whenever the control plane's URL is https.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from edgegen.agent.client import ControlPlaneClient
from edgegen.agent.download import download
from edgegen.agent.health import HealthCheckError, HealthPolicy, check_health
from edgegen.agent.journal import Journal, atomic_write, crashpoint
from edgegen.agent.quality import QualityPolicy, check_adapter_quality
from edgegen.agent.serving import Adapters, ModelServer, NullServer, slot_model_id
from edgegen.agent.slots import ActiveRecord, Slots
from edgegen.agent.steps import Event, Outcome, Step, next_step
from edgegen.agent.tls import DeviceTls
from edgegen.agent.trust import TrustedState, TrustLimits, check_adapter_base, delta_budget, download_budget
from edgegen.backoff import backoff_delay
from edgegen.delta import ENCODING as DELTA_ENCODING
from edgegen.errors import (
    AuthError,
    BindingError,
    EdgegenError,
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
from edgegen.sealed import (
    DeviceKey,
    PlainCopy,
    is_sealed,
    is_sealed_value,
    key_passphrase,
    open_value,
    plain_copy,
    seal_value,
)

log = logging.getLogger(__name__)

MAX_HEALTH_ATTEMPTS = 3
MAX_OUTBOX = 200
CREDENTIAL_LABEL = "edgegen device credential"  # associated data of the sealed credential
TLS_KEY_LABEL = "edgegen device tls key"  # derives the passphrase of trust/device.key


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
    # extra LoRA adapter streams served beside the model on its base (multi-LoRA), by stream name
    adapters: tuple[str, ...] = ()
    # the device profile to report (a JSON file `edgegen profile` wrote, or a shipped profile's name);
    # sent when it changes, so rollouts can select this device by profile or by fit
    profile: str | None = None
    # opted-in held-out text: a new LoRA adapter is scored on it (base vs base + adapter perplexity,
    # ``agent.quality``) before it serves, and the figures go in the switched report for the rollout's
    # ``heldout_ppl_ratio`` gate; None: no quality check (the text never leaves the device)
    quality: QualityPolicy | None = None

    def __post_init__(self) -> None:
        for name in self.adapters:
            if not STREAM_NAME.fullmatch(name):
                raise UserInputError(f"adapter stream name {name!r}: use letters, digits, '.', '_' or '-'")


STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
        self._streams: dict[str, Slots] = {}
        self.journal = Journal(self.dir / "journal.json")
        self.server = server or NullServer()
        self.transport = transport
        self.clock = clock
        self.tls = DeviceTls(self.dir, key_passphrase(self.key, TLS_KEY_LABEL) if self.key is not None else None)
        self._client: ControlPlaneClient | None = None
        self._trust: TrustedState | None = None
        # a sealed base model's plaintext memory file, kept open so that every engine loaded on that
        # base (hot swaps of adapters, health checks) maps the same pages: one base in RAM
        self._plain_base: tuple[str, PlainCopy] | None = None
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

    def credential(self) -> dict[str, str]:
        """``{"server", "device_id", "credential"}``. With an at-rest key the file is sealed
        (``sealed.seal_value``): a stolen data dir holds no usable credential; a credential written
        in the clear (enrolled before the key was configured) is sealed now, once."""
        try:
            raw = self.credential_path.read_bytes()
        except FileNotFoundError as exc:
            raise NotEnrolledError(f"{self.dir} holds no device credential: pass --enroll-token") from exc
        if is_sealed_value(raw):
            if self.key is None:
                raise NotEnrolledError(f"{self.credential_path} is sealed and this agent has no at-rest key "
                                       "(--at-rest-key)")
            raw = open_value(self.key, raw, CREDENTIAL_LABEL)
        elif self.key is not None:
            self._write_credential(json.loads(raw))
        return dict(json.loads(raw))

    def _write_credential(self, cred: dict[str, str]) -> None:
        data = json.dumps(cred).encode()
        if self.key is not None:
            data = seal_value(self.key, data, CREDENTIAL_LABEL)
        atomic_write(self.credential_path, data, 0o600, label="credential")

    def enroll(self, token: str, bundle: dict[str, Any] | None = None) -> str:
        """Spend the token for a credential and bootstrap trust; a no-op once enrolled.

        ``bundle`` (from ``fleet enroll-token --bundle``): the fleet CA to pin for TLS and, on a
        mutual-TLS fleet, the short-lived certificate to enrol with; over https the device then
        sends a CSR for its own new key and keeps the certificate the control plane issues."""
        if self.enrolled():
            return self.credential()["device_id"]
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
        self._write_credential({"server": self.config.server, "device_id": resp["device_id"],
                                "credential": resp["credential"]})
        return resp["device_id"]

    def client(self) -> ControlPlaneClient:
        if self._client is None:
            if not self.enrolled():
                raise NotEnrolledError(f"{self.dir} holds no device credential: pass --enroll-token")
            cred = self.credential()
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
        if self._plain_base is not None:
            self._plain_base[1].close()
            self._plain_base = None

    # ---- journal helpers -----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = self.journal.load()
        state.setdefault("update", None)
        state.setdefault("failed", {})
        state.setdefault("high_water", {})
        state.setdefault("outbox", [])
        return state

    def _queue(self, state: dict[str, Any], kind: str, *, ok: bool = True, version: int | None = None,
               reason: str | None = None, detail: dict[str, Any] | None = None, stream: str | None = None) -> None:
        """An outcome for the control plane. For an extra adapter ``stream`` the version goes in the
        detail (``adapter``, ``adapter_version``): the report's ``version`` is the model's."""
        act = self.slots.active()
        if stream is not None:
            detail = {**(detail or {}), "adapter": stream, "adapter_version": version}
            version = None
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

    def stream_slots(self, stream: str | None) -> Slots:
        """The A/B slots of ``stream``: the model's (None), or an extra adapter stream's."""
        if stream is None:
            return self.slots
        if stream not in self._streams:
            self._streams[stream] = Slots(self.dir / "adapters" / stream, key=self.key)
        return self._streams[stream]

    def _check_active(self, state: dict[str, Any], stream: str | None) -> ActiveRecord | None:
        """The stream's active slot, verified; else the other slot if it verifies. An extra adapter
        with neither is dropped (the model keeps serving; the stream installs again)."""
        slots = self.stream_slots(stream)
        act = slots.active()
        if act is None or slots.verify(act.slot) is not None:
            return act
        other = "b" if act.slot == "a" else "a"
        m = slots.verify(other)
        reason = f"active slot {act.slot} does not match its manifest"
        if stream is not None:
            reason = f"adapter {stream}: {reason}"
        if m is not None:
            act = slots.switch(other, m)
            reason += f"; fell back to slot {other} (v{m.version})"
        elif stream is not None:
            slots.pointer.unlink(missing_ok=True)
            act = None
            reason += "; not served until reinstalled"
        self._queue(state, "recovered", ok=False, reason=reason, stream=stream)
        return act

    def recover(self) -> ActiveRecord | None:
        """After a (re)start: the active slots must verify; an interrupted update resumes or ends."""
        state = self._state()
        act = self._check_active(state, None)
        for name in self.config.adapters:
            self._check_active(state, name)
        upd = state["update"]
        if upd is not None:
            s_act = self.stream_slots(upd.get("stream")).active()
            if s_act is not None and upd["slot"] == s_act.slot and upd["version"] != s_act.version:
                state["update"] = None  # cannot happen by construction; never touch the active slot
            elif s_act is not None and (s_act.name, s_act.version) == (upd["name"], upd["version"]):
                upd["step"] = Step.REPORT  # the switch committed before the crash
            self._queue(state, "recovered", version=upd["version"], detail={"step": upd["step"]},
                        stream=upd.get("stream"))
        self.journal.save(state)
        self._serve(swap=False)
        self._recovered = True
        return act

    @contextlib.contextmanager
    def _runnable(self) -> Iterator[tuple[Path, Path | None, str, Adapters] | None]:
        """What the server loads: the active model (+ its adapter), and every extra adapter stream's
        active adapter made for that base (one made for another base waits for its next version)."""
        act = self.slots.active()
        if act is None:
            yield None
            return
        base = self.slots.base_of(act.slot)
        with contextlib.ExitStack() as stack:
            model, adapter = stack.enter_context(self._open_runnable(self.slots, act.slot, share=True))
            extra: Adapters = {}
            for name in self.config.adapters:
                if name == act.name:  # the model itself is this adapter stream: loaded already
                    continue
                slots = self.stream_slots(name)
                a = slots.active()
                m = slots.slot_manifest(a.slot) if a is not None else None
                if a is None or m is None or not m.is_adapter or base is None or m.base_sha256 != base[0]:
                    continue
                extra[name] = (stack.enter_context(slots.open_plain(slots.adapter_path(a.slot))), f"v{m.version}")
            yield model, adapter, slot_model_id(self.slots.dir(act.slot)), extra

    @contextlib.contextmanager
    def _open_runnable(self, slots: Slots, slot: str, *, share: bool = False) -> Iterator[tuple[Path, Path | None]]:
        """``slots.open_runnable``, except that a sealed base model is opened from the shared memory
        file when it is the same base (by sha256); ``share``: make this base the shared one (the one
        served), closing the previous base's file once the caller is done (the old engine keeps its
        own mapping until it is closed)."""
        model, adapter = slots.runnable(slot)
        if self.key is None or not is_sealed(model):
            with slots.open_runnable(slot) as paths:
                yield paths
            return
        base = slots.base_of(slot)
        sha = base[0] if base is not None else ""
        with contextlib.ExitStack() as stack:
            if self._plain_base is None or self._plain_base[0] != sha:
                if not share:
                    yield stack.enter_context(slots.open_runnable(slot))
                    return
                old, self._plain_base = self._plain_base, (sha, plain_copy(model, self.key, model.name))
                if old is not None:
                    stack.callback(old[1].close)
            yield self._plain_base[1].path, None if adapter is None else stack.enter_context(slots.open_plain(adapter))

    def _serve(self, *, swap: bool) -> None:
        """Start (or hot-swap) the server on what is active now."""
        with self._runnable() as run:
            if run is None:
                return
            model, adapter, model_id, extra = run
            (self.server.swap if swap else self.server.start)(model, adapter=adapter, model_id=model_id,
                                                              adapters=extra)
        self._note_server()

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
            desired = self.client().desired(self.config.adapters)
            try:
                model, version, adapters = self.check_desired(desired)
            except TrustError as exc:  # stale (freeze), replayed or foreign answer: stay, and say so
                outcome = self._refused(self._state(), desired.get("version"), exc)
                self._status(outcome=outcome, reason=f"{type(exc).__name__}: {exc}")
                self.flush_reports()
                return outcome
            outcome = self.update_all(model, version, adapters)
            self._status(outcome=outcome, desired=version, **({"adapters": adapters} if adapters else {}))
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

    def check_desired(self, desired: dict[str, Any]) -> tuple[str | None, int | None, dict[str, int | None]]:
        """(model, version, {adapter stream: version}) to move to: from the signed statement when the
        root delegates freshness; a stream the answer does not name gets no version."""
        trust = self.trust()
        if not trust.requires_freshness:
            hint = desired.get("adapters") if isinstance(desired.get("adapters"), dict) else {}
            return desired.get("model"), desired.get("version"), self._streams_of(hint)
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
        return ds.model, ds.version, self._streams_of(ds.adapters)

    def _streams_of(self, answer: dict[str, Any]) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name in self.config.adapters:
            v = answer.get(name)
            out[name] = v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None
        return out

    def update_all(self, name: str | None, version: int | None, adapters: dict[str, int | None]) -> Outcome:
        """The model first, then each extra adapter stream, one update at a time (an interrupted one
        first, whichever stream it is for). Returns the first outcome that is not current or idle."""
        streams: list[tuple[str | None, str | None, int | None]] = [(None, name, version)]
        streams += [(n, n, adapters.get(n)) for n in self.config.adapters]
        pending = self._state()["update"]
        if pending is not None:
            streams.sort(key=lambda s: s[0] != pending.get("stream"))
        outcomes = [self.update_towards(n, v, stream=stream) for stream, n, v in streams]
        busy = [o for o in outcomes if o not in (Outcome.CURRENT, Outcome.IDLE)]
        if busy:
            return busy[0]
        return Outcome.CURRENT if Outcome.CURRENT in outcomes else Outcome.IDLE

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the recorded control plane (telemetry uploads share it)."""
        return self.tls.context(self.config.server or self.credential()["server"])

    def _enrolled_id(self) -> str:
        return str(self.credential()["device_id"])

    def update_towards(self, name: str | None, version: int | None, *, stream: str | None = None) -> Outcome:
        """Carry ``stream`` (None: the model; else an extra adapter stream) towards ``name`` v``version``."""
        state = self._state()
        act = self.stream_slots(stream).active()
        upd = state["update"]
        if (upd is not None and (upd.get("stream"), upd["name"], upd["version"]) != (stream, name, version)
                and upd["step"] != Step.REPORT):
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
                upd = self._start(state, name, version, act, stream)
            except TrustError as exc:
                return self._refused(state, version, exc, stream=stream)
        try:
            return self._advance(state, upd)
        except TrustError as exc:
            return self._refused(state, upd["version"], exc, stream=upd.get("stream"))

    def _start(self, state: dict[str, Any], name: str, version: int, act: ActiveRecord | None,
               stream: str | None = None) -> dict[str, Any]:
        data = self.client().manifest(name, version)
        manifest = self.trust().verify_manifest(
            data, name=name, now=self.clock(), active_version=act.version if act and act.name == name else None,
            expected_version=version, min_version=state["high_water"].get(name))
        if stream is not None and not manifest.is_adapter:
            raise BindingError(f"{name} v{version} is a model, not a LoRA adapter: only adapters are served "
                               "beside the model")
        main = self.slots.active()  # the base an adapter (of any stream) goes onto
        base = self.slots.base_of(main.slot) if main is not None else None
        check_adapter_base(manifest, base[0] if base else None)
        self.slots.check_installable(manifest)  # before any byte is downloaded
        enc = self.config.encoding if self.config.encoding in manifest.transfers else None
        delta = self._delta_offer(state, manifest, act)
        upd = {"stream": stream, "name": name, "version": version, "slot": self.stream_slots(stream).inactive(),
               "encoding": DELTA_ENCODING if delta else enc, "delta": delta,
               "base_slot": main.slot if manifest.is_adapter and main is not None else None,
               "envelope": data.decode(), "step": Step.DOWNLOAD, "health_attempts": 0}
        state["update"] = upd
        state.get("last_refusals", {}).pop(stream or "", None)
        self._queue(state, "downloading", version=version, stream=stream,
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
        slots = self.stream_slots(upd.get("stream"))
        active = slots.slot_manifest(d["base_slot"])
        if active is None or active.sha256 != d["base_sha256"]:
            raise HashMismatchError("the delta's base is no longer installed")
        return slots.artifact_path(d["base_slot"], active)

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

    def _refused(self, state: dict[str, Any], version: int | None, exc: TrustError, *,
                 stream: str | None = None) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("update of %s to v%s refused: %s", stream or "the model", version, reason)
        state = self._state()  # the step may have saved progress; start from the journal again
        state["update"] = None
        self._clean_downloads(keep=None)
        refusals = state.setdefault("last_refusals", {})
        if refusals.get(stream or "") != [version, reason]:
            refusals[stream or ""] = [version, reason]
            self._queue(state, "update_refused", ok=False, version=version, reason=reason, stream=stream)
        self.journal.save(state)
        return Outcome.REFUSED

    def _advance(self, state: dict[str, Any], upd: dict[str, Any]) -> Outcome:
        manifest = Manifest.from_signed(load_envelope(upd["envelope"].encode(), "manifest")["signed"])
        slots = self.stream_slots(upd.get("stream"))
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
                    slots.install(upd["slot"], self._part(sha), upd["encoding"], manifest,
                                       upd["envelope"].encode(), delta_base=self._delta_base(upd),
                                       **self._adapter_base(upd, manifest))
                except (HashMismatchError, OversizeError):
                    if upd.get("delta"):  # never try this delta again: the next attempt takes the full transfer
                        state["no_delta"] = [manifest.name, manifest.version]
                        self.journal.save(state)
                    raise
                upd["step"] = next_step(step, Event.DONE)
            elif step is Step.HEALTH:
                if slots.verify(upd["slot"]) != manifest:
                    upd["step"] = next_step(step, Event.INPUT_MISSING)
                    continue
                upd["health_attempts"] += 1
                self.journal.save(state)
                try:
                    if upd["health_attempts"] > MAX_HEALTH_ATTEMPTS:
                        raise HealthCheckError(f"the agent died during {MAX_HEALTH_ATTEMPTS} health checks")
                    with self._open_runnable(slots, upd["slot"]) as (model, adapter):
                        report = check_health(model, self.config.health, adapter=adapter)
                        if adapter is not None and self.config.quality is not None:
                            upd["quality"] = self._adapter_quality(model, adapter)
                except HealthCheckError as exc:
                    return self._health_failed(state, upd, exc)
                upd["health"] = report.as_dict()
                upd["step"] = next_step(step, Event.DONE)
            elif step is Step.SWITCH:
                slots.switch(upd["slot"], manifest)
                self._serve(swap=True)  # the new model or adapter serves; in-flight requests finish
                hw = state["high_water"]
                hw[manifest.name] = max(hw.get(manifest.name, 0), manifest.version)
                upd["step"] = next_step(step, Event.DONE)
            else:  # Step.REPORT
                self._queue(state, "switched", version=manifest.version, stream=upd.get("stream"),
                            detail={"health": upd.get("health"), "timings_s": upd.get("timings", {}),
                                    **({"quality": upd["quality"]} if upd.get("quality") else {}),
                                    "encoding": upd["encoding"], "transfer_bytes": self._transfer(upd, manifest)[0]})
                state["update"] = None
                self._clean_downloads(keep=None)
                self.journal.save(state)
                return Outcome.SWITCHED
            timings = upd.setdefault("timings", {})
            timings[step.value] = round(timings.get(step.value, 0.0) + time.perf_counter() - t0, 4)
            crashpoint(f"step.{step.value}.before_save")
            self.journal.save(state)

    def _adapter_quality(self, model: Path, adapter: Path) -> dict[str, Any]:
        """The adapter's held-out perplexities (``agent.quality``); a device whose text cannot be
        scored says why instead (the rollout gate then counts it as not reporting)."""
        assert self.config.quality is not None
        try:
            return check_adapter_quality(model, adapter, self.config.quality).as_dict()
        except EdgegenError as exc:
            log.warning("adapter quality not measured: %s", exc)
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}

    def _health_failed(self, state: dict[str, Any], upd: dict[str, Any], exc: HealthCheckError) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        state["failed"].setdefault(upd["name"], {})[str(upd["version"])] = reason
        state["update"] = None
        self._queue(state, "health_failed", ok=False, version=upd["version"], reason=reason, stream=upd.get("stream"))
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
