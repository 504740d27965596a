"""Rollouts in the control plane's database: tables, creation, the desired-version policy, health.

    RolloutRow / RolloutEventRow   the rollout and its history (created, advance, halt, pause...)
    RolloutPolicy                  per model: staged (new versions ship only through rollouts; the
                                   default, also for a model with no row) and the released version
                                   devices outside rollouts follow
    release_now(session, model, version)       ``fleet publish --to all --now``: the released version
    select_devices(session, model, selector, version)   the devices ``selector`` names (``fleet.targeting``:
                                               ``all``, ``key=value``, ``profile:NAME``, ``fits[:CTX]``,
                                               a group; "," joins terms)
    create_rollout(session, spec, now)         validate and snapshot the group -> ``Rollout``
    rollout_resolver(session, device)          Fleet I's ``DesiredResolver`` seam, rollout-aware
    adapter_resolver(session, device, name)    the version of an extra LoRA adapter stream a device
                                               serves beside its model (multi-LoRA): the released
                                               (staged) or newest free version of that stream
    stage_health(session, rollout)             per-device ``DeviceHealth`` of the current stage
                                               (with each device's held-out perplexity ratio from
                                               its switched report, for the ``heldout_ppl_ratio`` gate)
    to_domain / save                           row <-> the pure ``fleet.rollout.Rollout``

The decisions themselves are pure (``fleet/rollout.py``); the loop that applies them is
``fleet/rollout_ctl.py``. This module opens no sockets and starts no threads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgegen.errors import InvalidRolloutError
from edgegen.fleet.db import Base, Device, DeviceEvent, EventKind, Model, ModelVersion, UTCDateTime, utcnow
from edgegen.fleet.registry import get_version
from edgegen.fleet.rollout import (
    ACTIVE_STATES,
    DEFAULT_GATES,
    Baseline,
    DeviceHealth,
    Gate,
    GateMetric,
    NoTraffic,
    Rollout,
    RolloutState,
    desired_version,
    held_versions,
    parse_stages,
    percentile,
)
from edgegen.telemetry import store as tstore

FAILED_KINDS = (EventKind.HEALTH_FAILED.value, EventKind.UPDATE_REFUSED.value)


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer)
    rollback_version: Mapped[int | None] = mapped_column(Integer)
    group: Mapped[str] = mapped_column("group_name", String(200))
    stages: Mapped[list[int]] = mapped_column(JSON)
    gates: Mapped[list[str]] = mapped_column(JSON)
    devices: Mapped[list[str]] = mapped_column(JSON)
    baseline: Mapped[dict[str, int | None]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    bake_s: Mapped[float] = mapped_column(Float, default=0.0)
    settle_fraction: Mapped[float] = mapped_column(Float, default=1.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    last_decision: Mapped[str] = mapped_column(Text, default="")  # why it holds, for the dashboard
    no_traffic_s: Mapped[float] = mapped_column(Float, default=600.0)
    on_no_traffic: Mapped[str] = mapped_column(String(16), default=NoTraffic.ADVANCE.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RolloutEventRow(Base):
    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(16))  # created | advance | complete | halt | pause | ...
    stage_index: Mapped[int] = mapped_column(Integer)
    percent: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    readings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class RolloutPolicy(Base):
    __tablename__ = "rollout_policies"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    staged: Mapped[bool] = mapped_column(Boolean, default=True)
    released_version: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _epoch(t: datetime) -> float:
    return t.timestamp()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def to_domain(row: RolloutRow) -> Rollout:
    return Rollout(
        id=row.id, model=row.model, version=row.version, previous_version=row.previous_version,
        group=row.group, stages=tuple(row.stages), devices=tuple(row.devices),
        rollback_version=row.rollback_version, baseline=dict(row.baseline or {}),
        gates=tuple(Gate.parse(g) for g in row.gates), state=RolloutState(row.state),
        stage_index=row.stage_index, stage_started_at=_epoch(row.stage_started_at), bake_s=row.bake_s,
        settle_fraction=row.settle_fraction, reason=row.reason or "",
        no_traffic_s=row.no_traffic_s if row.no_traffic_s is not None else 600.0,
        on_no_traffic=NoTraffic(row.on_no_traffic or NoTraffic.ADVANCE.value),
    )


def save(row: RolloutRow, r: Rollout) -> None:
    row.state = r.state.value
    row.stage_index = r.stage_index
    row.stage_started_at = _dt(r.stage_started_at)
    row.reason = r.reason
    row.updated_at = utcnow()


def log_event(session: Session, r: Rollout, action: str, reason: str = "",
              readings: list[dict[str, Any]] | None = None) -> None:
    session.add(RolloutEventRow(rollout_id=r.id, action=action, stage_index=r.stage_index, percent=r.percent,
                                reason=reason, readings=readings or []))


def rollouts_of(session: Session, model: str) -> list[Rollout]:
    return [to_domain(r) for r in session.scalars(select(RolloutRow).where(RolloutRow.model == model))]


def published_versions(session: Session, model: str) -> list[int]:
    return list(session.scalars(select(ModelVersion.version).join(Model).where(Model.name == model)))


# ---- the desired-version policy (Fleet I's ``DesiredResolver`` seam) --------------------------------


def desired_number(session: Session, device: Device) -> int | None:
    if not device.model_name:
        return None
    pol = session.get(RolloutPolicy, device.model_name)
    # no policy row: staged, nothing released (publishing alone ships nothing)
    return desired_version(device.id, device.active_version, rollouts_of(session, device.model_name),
                           published_versions(session, device.model_name),
                           staged=pol.staged if pol else True, released=pol.released_version if pol else None)


def set_staged(session: Session, model: str, staged: bool, below: int | None = None) -> RolloutPolicy:
    """Stage (or un-stage) ``model``. Staging a model an operator had un-staged (live publishing)
    freezes what devices outside rollouts follow now: the newest free version, below ``below`` when a
    rollout of it is starting. A model with no policy row is already staged with nothing released."""
    pol = session.get(RolloutPolicy, model)
    if pol is None:
        pol = RolloutPolicy(model=model, staged=True, released_version=None)
        session.add(pol)
    if staged and not pol.staged:
        held = held_versions(rollouts_of(session, model))
        free = [v for v in published_versions(session, model) if v not in held and (below is None or v < below)]
        pol.released_version = max(free) if free else None
    pol.staged = staged
    pol.updated_at = utcnow()
    session.flush()
    return pol


def mark_released(session: Session, model: str, version: int) -> None:
    pol = session.get(RolloutPolicy, model)
    if pol is not None and (pol.released_version or 0) < version:
        pol.released_version = version
        pol.updated_at = utcnow()


def release_now(session: Session, model: str, version: int) -> RolloutPolicy:
    """Make ``version`` what every device of ``model`` outside a rollout runs, at once (no stages,
    no gates): the operator's explicit ``fleet publish --to all --now``; caller commits.

    Raises ``InvalidRolloutError`` when the version is not published, when a rollout of the model is
    running or paused (it decides for its devices; finish or abort it first) or when the version is
    not newer than the released one (devices refuse older version numbers).
    """
    if get_version(session, model, version) is None:
        raise InvalidRolloutError(f"{model} v{version} is not published.")
    active = [r for r in rollouts_of(session, model) if r.state in ACTIVE_STATES]
    if active:
        raise InvalidRolloutError(
            f"rollout {active[0].id} of {model} is {active[0].state.value}; abort it before releasing v{version} "
            "to all devices at once.")
    pol = set_staged(session, model, True)
    if pol.released_version is not None and version <= pol.released_version:
        raise InvalidRolloutError(
            f"{model} v{version} is not newer than the released v{pol.released_version}; devices refuse "
            "older version numbers, so publish the bytes again as a newer version.")
    pol.released_version = version
    pol.updated_at = utcnow()
    session.flush()
    return pol


def rollout_resolver(session: Session, device: Device) -> ModelVersion | None:
    number = desired_number(session, device)
    return get_version(session, device.model_name, number) if number is not None and device.model_name else None


def adapter_resolver(session: Session, device: Device, name: str) -> ModelVersion | None:
    """The version of adapter stream ``name`` that ``device`` should serve beside its model. Rollouts
    select devices by the model they follow, so a device serving ``name`` as an extra adapter is in
    none of ``name``'s rollouts: it follows the version they release (staged) or the newest free one."""
    pol = session.get(RolloutPolicy, name)
    number = desired_version(device.id, None, rollouts_of(session, name), published_versions(session, name),
                             staged=pol.staged if pol else True, released=pol.released_version if pol else None)
    return get_version(session, name, number) if number is not None else None


# ---- creation ----------------------------------------------------------------------------------


def select_devices(session: Session, model: str, selector: str, version: int | None = None,
                   left_out: dict[str, str] | None = None) -> list[Device]:
    """The devices following ``model`` that ``selector`` names (``fleet.targeting``); ``fits`` plans
    against ``version``'s signed facts. ``left_out`` collects device id -> why it was not selected."""
    from edgegen.fleet.signing import Manifest, load_envelope
    from edgegen.fleet.targeting import Target, match, parse_selector

    sel = parse_selector(selector)
    facts = None
    if sel.needs_facts:
        row = get_version(session, model, version) if version is not None else None
        if row is None:
            raise InvalidRolloutError(f"selecting by fit needs a published version of {model}")
        facts = Manifest.from_signed(load_envelope(row.envelope.encode(), "manifest")["signed"]).plan
        if facts is None:
            raise InvalidRolloutError(f"{model} v{version}'s manifest carries no planner facts (an adapter, or "
                                      "published before manifests had them): select devices another way")
    q = select(Device).where(Device.model_name == model, Device.revoked_at.is_(None))
    out = []
    for d in session.scalars(q):
        ok, why = match(sel, Target(d.group, d.labels, d.profile), facts)
        if ok:
            out.append(d)
        elif left_out is not None:
            left_out[d.id] = why
    return out


@dataclass(frozen=True)
class RolloutSpec:
    model: str
    version: int
    group: str
    stages: tuple[int, ...] = (10, 50, 100)
    gates: tuple[Gate, ...] = DEFAULT_GATES
    rollback_version: int | None = None
    bake_s: float = 0.0
    settle_fraction: float = 1.0
    no_traffic_s: float = 600.0
    on_no_traffic: NoTraffic = NoTraffic.ADVANCE
    extra: dict[str, Any] = field(default_factory=dict)


def check_newer(model: str, version: int, devices: list[Device], meant: dict[str, int | None]) -> None:
    """Refuse a rollout of ``version`` when a member already runs it or anything newer, or is meant
    to (``meant``: device id -> the version it follows now): devices refuse versions that are not
    strictly newer than what they run, so such members would sit refusing (shown as errors)."""
    ahead = sorted((d.id, d.active_version, meant.get(d.id)) for d in devices
                   if (d.active_version or 0) >= version or (meant.get(d.id) or 0) >= version)
    if ahead:
        dev, active, want = ahead[0]
        runs = f"runs v{active}" if active is not None and active >= version else f"is meant to run v{want}"
        raise InvalidRolloutError(
            f"{model} v{version} is not newer than what {len(ahead)} of {len(devices)} member(s) run "
            f"(e.g. {dev} {runs}); devices only accept strictly newer version numbers: publish the "
            f"bytes as a newer version and roll that out.")


def precheck(session: Session, model: str, version: int, group: str) -> tuple[list[Device], dict[str, int | None]]:
    """The checks a rollout must pass before anything is signed or stored: the version is published,
    no other rollout of the model is active, the group has devices and none already runs the version
    or a newer one. Returns the group's devices and the version each follows now; stages the model
    (the caller commits, or rolls back for a mere plan)."""
    if get_version(session, model, version) is None:
        raise InvalidRolloutError(f"{model} v{version} is not published.")
    active = [r for r in rollouts_of(session, model) if r.state in ACTIVE_STATES]
    if active:
        raise InvalidRolloutError(
            f"{model} already has rollout {active[0].id} {active[0].state.value}; pause or abort it first.")
    left_out: dict[str, str] = {}
    devices = select_devices(session, model, group, version, left_out)
    if not devices:
        why = "; ".join(f"{d}: {r}" for d, r in sorted(left_out.items())[:5])
        raise InvalidRolloutError(f"no enrolled device in group {group!r} follows {model}."
                                  + (f" Left out: {why}" if why else ""))
    set_staged(session, model, True, below=version)  # from now on, versions ship by rollout
    baseline = {d.id: desired_number(session, d) for d in devices}
    check_newer(model, version, devices, baseline)
    return devices, baseline


def create_rollout(session: Session, spec: RolloutSpec, now: datetime | None = None) -> Rollout:
    """Check the spec against the registry and the fleet, snapshot the group, store; caller commits."""
    now = now or utcnow()
    stages = parse_stages(spec.stages)
    if not 0 < spec.settle_fraction <= 1 or spec.bake_s < 0 or spec.no_traffic_s < 0:
        raise InvalidRolloutError("settle fraction must be in (0, 1], bake and no-traffic times >= 0.")
    devices, baseline = precheck(session, spec.model, spec.version, spec.group)
    counts = Counter(v for v in baseline.values() if v is not None)
    previous = counts.most_common(1)[0][0] if counts else None
    if spec.rollback_version is not None:
        rb = get_version(session, spec.model, spec.rollback_version)
        if rb is None or spec.rollback_version <= spec.version:
            raise InvalidRolloutError(
                f"rollback version v{spec.rollback_version} must be published and newer than v{spec.version}.")
        prev_row = get_version(session, spec.model, previous) if previous is not None else None
        if prev_row is not None and rb.sha256 != prev_row.sha256:
            raise InvalidRolloutError(
                f"rollback version v{spec.rollback_version} does not carry v{previous}'s bytes.")
    row = RolloutRow(
        model=spec.model, version=spec.version, previous_version=previous, rollback_version=spec.rollback_version,
        group=spec.group, stages=list(stages), gates=[str(g) for g in spec.gates],
        devices=sorted(d.id for d in devices), baseline=baseline, state=RolloutState.RUNNING.value,
        stage_index=0, stage_started_at=now, bake_s=spec.bake_s, settle_fraction=spec.settle_fraction,
        reason="", last_decision="", created_at=now, updated_at=now, no_traffic_s=spec.no_traffic_s,
        on_no_traffic=spec.on_no_traffic.value,
    )
    session.add(row)
    session.flush()
    r = to_domain(row)
    log_event(session, r, "created", f"{len(devices)} devices, stages {','.join(map(str, stages))}")
    return r


# ---- what the stage looks like --------------------------------------------------------------------


def failed_devices(session: Session, device_ids: list[str], version: int, since: datetime) -> set[str]:
    q = select(DeviceEvent.device_id).where(
        DeviceEvent.device_id.in_(device_ids), DeviceEvent.version == version,
        DeviceEvent.kind.in_(FAILED_KINDS), DeviceEvent.at >= since)
    return {d for d in session.scalars(q) if d is not None}


def heldout_ppl_ratios(session: Session, device_ids: list[str], model: str, version: int,
                       since: datetime) -> dict[str, float]:
    """device -> ppl(base + adapter) / ppl(base) on its own held-out text, from the ``quality`` of its
    latest ``switched`` report of ``model`` v``version`` (``agent.quality``); devices without one are left out."""
    q = (select(DeviceEvent.device_id, DeviceEvent.detail)
         .where(DeviceEvent.device_id.in_(device_ids), DeviceEvent.version == version,
                DeviceEvent.model_name == model, DeviceEvent.kind == EventKind.SWITCHED.value,
                DeviceEvent.at >= since)
         .order_by(DeviceEvent.id))
    out: dict[str, float] = {}
    for dev_id, detail in session.execute(q).all():
        quality = (detail or {}).get("quality") or {}
        try:
            ppl, base = float(quality["ppl"]), float(quality["ppl_base"])
        except (KeyError, TypeError, ValueError):
            continue  # no figures (no opted-in text, or it could not be scored)
        if dev_id is not None and base > 0 and ppl == ppl:  # a NaN perplexity is no report
            out[dev_id] = ppl / base
    return out


def stage_health(session: Session, r: Rollout, created_at: datetime) -> tuple[list[DeviceHealth], Baseline]:
    members = r.members()
    rows = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(members)))}
    failed = failed_devices(session, members, r.version, created_at - timedelta(seconds=1))
    ratios = (heldout_ppl_ratios(session, members, r.model, r.version, created_at - timedelta(seconds=1))
              if any(g.metric is GateMetric.HELDOUT_PPL_RATIO for g in r.gates) else {})
    since = _dt(r.stage_started_at)
    health: list[DeviceHealth] = []
    for dev_id in members:
        dev = rows.get(dev_id)
        if dev is None or dev.revoked:
            continue  # revoked (or gone) since the rollout began: not waited for
        on = dev.active_version == r.version
        win = tstore.request_window(session, dev_id, r.version, since) if on else None
        health.append(DeviceHealth(
            device_id=dev_id, on_target=on, update_failed=(dev_id in failed and not on),
            requests=win.requests if win else 0, errors=win.errors if win else 0,
            latencies_ms=win.latencies_ms if win else (), logprob_sum=win.logprob_sum if win else 0.0,
            logprob_n=win.logprob_n if win else 0,
            drift_alert=on and tstore.drift_alert_since(session, dev_id, r.version, since),
            heldout_ppl_ratio=ratios.get(dev_id) if on else None,
        ))
    return health, baseline_of(session, r, created_at)


def baseline_of(session: Session, r: Rollout, created_at: datetime) -> Baseline:
    """The previous version's figures on the rollout's devices: mean log-prob over the day before the
    rollout and since; p95 latency over the hour before it and since (so, at the first stages,
    mostly measured alongside the new version, under the same load)."""
    metrics = {g.metric for g in r.gates}
    if r.previous_version is None:
        return Baseline()
    logprob = p95 = None
    if GateMetric.LOGPROB_DROP in metrics:
        logprob = tstore.mean_logprob(session, list(r.devices), r.previous_version, created_at - timedelta(days=1))
    if GateMetric.P95_LATENCY_RATIO in metrics:
        lat = [x for d in r.devices for x in tstore.request_window(
            session, d, r.previous_version, created_at - timedelta(hours=1), limit=1000).latencies_ms]
        p95 = percentile(lat, 95) if lat else None
    return Baseline(mean_logprob=logprob, p95_latency_ms=p95)
