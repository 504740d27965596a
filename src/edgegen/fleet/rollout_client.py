"""The operator's side of rollouts: sign the rollback version, then start and steer the rollout.

    rollback_manifest(previous_envelope, version, key)   a manifest for ``version`` carrying the
                                                          previous version's bytes (same sha256,
                                                          size and transfer blobs), freshly signed
    RolloutClient(url, admin_token)                      ``AdminClient`` plus the rollout API:
        .start(model, version, group, stages, gates, key=...)   plan -> publish rollback -> create
        .list() / .show(id) / .pause(id) / .resume(id) / .abort(id) / .tick()

Why a rollback *version*: devices refuse any version not strictly newer than the one they run
(anti-rollback), and the control plane holds no signing key. So when a rollout starts, the operator
(who holds the ``targets`` key) pre-signs "previous bytes as version N+1"; the control plane hands
it only to devices the rollout touched, and only if the rollout halts or is aborted. No bytes are
uploaded: the blobs are content-addressed and already stored.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from edgegen.errors import InvalidRolloutError
from edgegen.fleet.publish import AdminClient
from edgegen.fleet.signing import Manifest, SigningKey, canonical_json, sign


def rollback_manifest(previous_envelope: str | bytes, version: int, key: SigningKey, *,
                      now: datetime | None = None, expires_days: float = 90.0) -> bytes:
    prev = Manifest.from_signed(json.loads(previous_envelope)["signed"])
    if version <= prev.version:
        raise InvalidRolloutError(f"a rollback version must be newer than v{prev.version}, not v{version}.")
    now = now or datetime.now(timezone.utc)
    m = Manifest(name=prev.name, version=version, sha256=prev.sha256, size=prev.size,
                 architecture=prev.architecture, quantization=prev.quantization, created=now,
                 expires=now + timedelta(days=expires_days), transfers=dict(prev.transfers),
                 kind=prev.kind, base_sha256=prev.base_sha256)
    return canonical_json(sign(m.to_signed(), [key]))


class RolloutClient(AdminClient):
    def plan(self, model: str, group: str, version: int) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/rollouts/plan",
                          params={"model": model, "group": group, "version": version})

    def start(self, model: str, version: int, group: str = "all", *, stages: str | list[int] = "10,50,100",
              gates: list[str] | None = None, key: SigningKey | None = None, bake_s: float = 0.0,
              settle_fraction: float = 1.0, expires_days: float = 90.0, no_traffic_s: float = 600.0,
              on_no_traffic: str = "advance") -> dict[str, Any]:
        """Create a rollout; with ``key`` (the targets key) a rollback version is signed first.

        The plan is asked first, so a rollout the control plane would refuse (e.g. a version not
        newer than what members run) fails before any rollback version number is used up.
        """
        rollback_version = None
        if key is not None:
            plan = self.plan(model, group, version)
            if not plan["devices"]:
                raise InvalidRolloutError(f"no enrolled device in group {group!r} follows {model}.")
            if plan["previous_manifest"] is not None:
                rollback_version = max(plan["next_version"], version + 1)
                self.publish_envelope(rollback_manifest(plan["previous_manifest"], rollback_version, key,
                                                        expires_days=expires_days))
        body = {"model": model, "version": version, "group": group, "stages": stages, "gates": gates,
                "rollback_version": rollback_version, "bake_s": bake_s, "settle_fraction": settle_fraction,
                "no_traffic_s": no_traffic_s, "on_no_traffic": on_no_traffic}
        return self._call("POST", "/v1/admin/rollouts", json=body)

    def policy(self, model: str, staged: bool = True) -> dict[str, Any]:
        return self._call("PUT", f"/v1/admin/rollouts/policy/{model}", json={"staged": staged})

    def list(self, model: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/rollouts", params={"model": model} if model else None)

    def show(self, rollout_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/rollouts/{rollout_id}")

    def action(self, rollout_id: int, action: str, reason: str = "") -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/rollouts/{rollout_id}/{action}", json={"reason": reason})

    def pause(self, rollout_id: int, reason: str = "") -> dict[str, Any]:
        return self.action(rollout_id, "pause", reason)

    def resume(self, rollout_id: int) -> dict[str, Any]:
        return self.action(rollout_id, "resume")

    def abort(self, rollout_id: int, reason: str = "") -> dict[str, Any]:
        return self.action(rollout_id, "abort", reason)

    def tick(self) -> list[dict[str, Any]]:
        return self._call("POST", "/v1/admin/rollouts/tick")

    def drift(self, group: str, *, hours: float = 24.0, min_fraction: float = 0.0) -> dict[str, Any]:
        """The group's drift verdict (``drift.group.GroupDrift.to_dict``: ``flagged``, ``summary``...)."""
        return self._call("GET", "/v1/admin/drift", params={"group": group, "hours": hours,
                                                            "min_fraction": min_fraction})

    def telemetry_streams(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admin/telemetry/streams")

    def metrics(self) -> str:
        r = self.http.get("/metrics")
        r.raise_for_status()
        return r.text
