"""The federated loop closed into the fleet: learn on the devices, ship what was learnt back to them.

    learn_start(cfg, devices, fleet, work_dir) -> LearnReport      ``edgegen learn start``
        0. trigger       with ``fleet.on_drift``: the control plane's drift verdict for the group
                         (``GET /v1/admin/drift``, ``drift.group``); no drift flagged -> stop here
                         (state ``no-drift``), before any device trains
        1. federate      Flower run over the devices' SuperNodes (``learn.deploy``): LoRA factors
                         trained on each device's own text, SecAgg+ and DP by default
        2. judge         each device evaluated the global adapter against the base on its own
                         held-out text in the last round (on the device: the text never leaves it);
                         the adapter goes on only if no device got worse by more than
                         ``fleet.max_regression`` and the mean log-perplexity fell
        3. convert       factors -> GGUF LoRA adapter (``formats.lora_gguf``); llama.cpp's logits
                         with the adapter are checked against our torch forward on a public probe
                         text (the conversion is right, without reading any device's text)
        4. publish       signed (the publisher's targets key) as the next version of the adapter
                         stream, bound to the base model's sha256
        5. roll out      a staged rollout over the group with the fleet's gates, always with the
                         held-out perplexity gate (``heldout_ppl_ratio < 1 + max_regression``: each
                         device scores the adapter on its own held-out text at install,
                         ``agent.quality``); a version that breaches a gate halts at its stage and
                         its devices go back (``fleet.rollout``): a worse adapter stops at the canary
    publish_and_roll(adapter, fleet, base) -> dict                  steps 4-5 alone

Every step's outcome goes into one ``LearnReport``; a step that refuses stops the loop there and the
report says why. Not here: running on a schedule (a scheduler calls ``edgegen learn start --on-drift``
periodically; the drift verdict decides whether anything runs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import FleetError, UserInputError
from edgegen.learn.config import LearnConfig
from edgegen.learn.deploy import Device, Federation

__all__ = ["FleetTarget", "LearnReport", "adapter_from_result", "conversion_check", "group_drift_of", "judge",
           "learn_start", "publish_and_roll"]

PROBE_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
              "One day, she saw a big, red ball.")  # public text: the conversion check reads no device's text


@dataclass(frozen=True)
class FleetTarget:
    url: str
    admin_token: str
    keys_dir: Path
    group: str
    adapter: str  # the adapter stream's name in the registry
    stages: str = "10,50,100"
    gates: tuple[str, ...] = ("update_failure_rate<0@1",)
    no_traffic_s: float = 0.0
    max_regression: float = 0.02  # a device whose held-out perplexity rose more than this stops the loop
    rollout_timeout_s: float = 600.0
    on_drift: bool = False  # run only when the control plane flags drift for the group
    drift_hours: float = 24.0  # the window of drift alerts looked at
    drift_min_fraction: float = 0.0  # share of the group that must have alerted (0: one device)
    verify: Any = None  # the operator's TLS context for an https control plane (fleet.tls.admin_context)


@dataclass
class LearnReport:
    state: str = "started"  # no-drift | refused-quality | refused-conversion | publish-failed | halted |
    #                          completed | timeout
    drift: dict[str, Any] = field(default_factory=dict)  # the group's drift verdict (with --on-drift)
    federated: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    conversion: dict[str, Any] = field(default_factory=dict)
    adapter: str = ""
    version: int | None = None
    rollout: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(last_round: list[dict[str, Any]], max_regression: float) -> tuple[bool, str]:
    """Pure: does the per-device evaluation (``ppl``, ``ppl_base``) allow publishing the adapter?"""
    if not last_round:
        return False, "no device evaluated the global adapter"
    worse = [c for c in last_round if c["ppl"] > c["ppl_base"] * (1 + max_regression)]
    if worse:
        names = ", ".join(f"{c['device']} {c['ppl_base']:.2f}->{c['ppl']:.2f}" for c in worse)
        return False, f"held-out perplexity rose on {len(worse)} device(s): {names}"
    mean_ln = float(np.mean([math.log(c["ppl"] / c["ppl_base"]) for c in last_round]))
    if mean_ln >= 0:
        return False, f"the mean log-perplexity did not fall ({mean_ln:+.4f})"
    return True, f"mean log-perplexity {mean_ln:+.4f} over {len(last_round)} devices"


def adapter_from_result(out_dir: Path, cfg: LearnConfig, name: str) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    """global.npz -> ``adapter.gguf`` in ``out_dir``; returns its path and the (A, B) pairs."""
    from edgegen.formats.gguf_file import field_value, open_reader
    from edgegen.formats.lora_gguf import write_lora_gguf
    from edgegen.learn.lora import LoraModel, load_base

    with np.load(Path(out_dir) / "global.npz") as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    model = LoraModel(load_base(Path(cfg.model)), cfg.lora)
    model.set_arrays(arrays)
    pairs = model.pairs()
    arch = str(field_value(open_reader(Path(cfg.model)), "general.architecture", "llama"))
    out = write_lora_gguf(Path(out_dir) / "adapter.gguf", arch, pairs, alpha=cfg.alpha, name=name)
    return out, pairs  # type: ignore[return-value]


def conversion_check(cfg: LearnConfig, adapter: Path, arrays_dir: Path) -> dict[str, Any]:
    """llama.cpp (base + GGUF adapter) against our torch forward (base + factors) on ``PROBE_TEXT``:
    mean absolute logit difference and top-1 agreement, with and without the adapter."""
    import torch

    from edgegen.learn.lora import LoraModel, load_base
    from edgegen.runtime.engine import Engine

    with np.load(Path(arrays_dir) / "global.npz") as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    model = LoraModel(load_base(Path(cfg.model)), cfg.lora)
    with Engine(Path(cfg.model), n_ctx=128, n_threads=1, logits_all=True) as eng:
        ids = eng.tokenize(PROBE_TEXT, add_bos=True)[:128]
        base_cpp = eng.logits(ids)  # [T, V]
    with Engine(Path(cfg.model), n_ctx=128, n_threads=1, logits_all=True, lora_path=adapter) as eng:
        lora_cpp = eng.logits(ids)
    x = torch.tensor(ids)
    with torch.no_grad():
        model.set_arrays([np.zeros_like(a) for a in arrays])
        model._merge()
        base_pt = model.fwd(x).numpy()
        model.set_arrays(arrays)
        model._merge()
        lora_pt = model.fwd(x).numpy()
    return {"tokens": len(ids),
            "adapter_mean_abs_logit_diff": float(np.abs(lora_cpp - lora_pt).mean()),
            "adapter_top1_agreement": float((lora_cpp.argmax(-1) == lora_pt.argmax(-1)).mean()),
            "base_mean_abs_logit_diff": float(np.abs(base_cpp - base_pt).mean()),
            "adapter_effect_mean_abs": float(np.abs(lora_pt - base_pt).mean())}


def publish_and_roll(adapter: Path, fleet: FleetTarget, base_model: Path, work_dir: Path,
                     tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Sign ``adapter`` as the next version of ``fleet.adapter`` (bound to the base's sha256), publish
    it, start a staged rollout over ``fleet.group`` with ``fleet.gates`` (plus the held-out perplexity
    gate at ``1 + fleet.max_regression`` unless one is given) and follow it to a final state.

    ``tick``: called between polls (tests drive their in-process agents with it). Raises
    ``FleetError`` subclasses from the registry and rollout API."""
    from edgegen.agent.download import sha256_file
    from edgegen.fleet.keys import Keyring
    from edgegen.fleet.publish import build_release
    from edgegen.fleet.rollout import GateMetric
    from edgegen.fleet.rollout_client import RolloutClient

    ring = Keyring.open(fleet.keys_dir)
    # the held-out gate first: the control plane's ``merge_gates`` lets a later gate of the same metric
    # (or ``heldout_ppl_ratio=off``) from the operator replace it
    gates = [f"{GateMetric.HELDOUT_PPL_RATIO.value}<{1 + fleet.max_regression:g}@1", *fleet.gates]
    with RolloutClient(fleet.url, fleet.admin_token, verify=fleet.verify) as admin:
        # devices accept only versions newer than what they run, whatever stream it came from
        members = [d for d in admin.devices() if d.get("group") == fleet.group]
        running = max([int(d.get("active_version") or 0) for d in members] + [0])
        version = max(admin.next_version(fleet.adapter), running + 1)
        rel = build_release(adapter, name=fleet.adapter, version=version, key=ring.targets_key,
                            work_dir=Path(work_dir) / f"release-{fleet.adapter}-{version}",
                            base_sha256=sha256_file(Path(base_model))[0])
        admin.publish(rel)
        r = admin.start(fleet.adapter, version, fleet.group, stages=fleet.stages, gates=gates,
                        key=ring.targets_key, on_no_traffic="advance", no_traffic_s=fleet.no_traffic_s)
        deadline = time.monotonic() + fleet.rollout_timeout_s
        percents: list[int] = []
        show = admin.show(r["id"])
        while time.monotonic() < deadline:
            show = admin.show(r["id"])
            if not percents or percents[-1] != show["percent"]:
                percents.append(show["percent"])
            if show["state"] != "running":
                break
            if tick is not None:
                tick()
            admin.tick()
            time.sleep(0.2)
        return {"version": version, "rollout_id": r["id"], "state": show["state"], "percents": percents,
                "reason": show.get("reason") or show.get("halt_reason") or ""}


def group_drift_of(fleet: FleetTarget) -> dict[str, Any]:
    """The control plane's drift verdict for ``fleet.group`` (``drift.group.GroupDrift.to_dict``).
    Raises ``FleetError`` / ``UserInputError`` (unknown group, refused token) from the admin API."""
    from edgegen.fleet.rollout_client import RolloutClient

    with RolloutClient(fleet.url, fleet.admin_token, verify=fleet.verify) as admin:
        return admin.drift(fleet.group, hours=fleet.drift_hours, min_fraction=fleet.drift_min_fraction)


def learn_start(cfg: LearnConfig, devices: list[Device], fleet: FleetTarget, work_dir: Path, *,
                run_timeout: float = 1800.0, tick: Callable[[], None] | None = None) -> LearnReport:
    """The whole loop (module docstring); returns its report, whatever step it stopped at."""
    work_dir = Path(work_dir)
    cfg = replace(cfg, out_dir=str(work_dir / "run")).check()
    report = LearnReport()
    if fleet.on_drift:
        report.drift = group_drift_of(fleet)
        if not report.drift["flagged"]:
            report.state, report.reason = "no-drift", report.drift["summary"]
            return report
    with Federation(work_dir / "federation", devices) as fed:
        result = fed.run(cfg, timeout=run_timeout)
    report.federated = {k: result[k] for k in ("wall_s", "adapter_bytes", "epsilon", "delta")}
    report.federated["rounds"] = len(result["rounds"])
    first = result["rounds"][0]["clients"] if result["rounds"] else []
    report.federated["up_bytes_per_round"] = {c["device"]: c["up_bytes"] for c in first}
    last = result["rounds"][-1]["clients"] if result["rounds"] else []
    report.devices = [{k: c[k] for k in ("device", "ppl_base", "ppl")} for c in last]
    ok, why = judge(last, fleet.max_regression)
    if not ok:
        report.state, report.reason = "refused-quality", why
        return report
    adapter, _ = adapter_from_result(work_dir / "run", cfg, fleet.adapter)
    report.adapter = str(adapter)
    report.conversion = conversion_check(cfg, adapter, work_dir / "run")
    if report.conversion["adapter_top1_agreement"] < 0.9:
        report.state = "refused-conversion"
        report.reason = "llama.cpp with the GGUF adapter disagrees with the trained model"
        return report
    try:
        roll = publish_and_roll(adapter, fleet, Path(cfg.model), work_dir, tick=tick)
    except (FleetError, UserInputError) as exc:  # unreachable plane, refused publication or rollout
        report.state, report.reason = "publish-failed", str(exc)
        return report
    report.version, report.rollout = roll["version"], roll
    report.state = roll["state"] if roll["state"] in ("completed", "halted") else "timeout"
    report.reason = why if report.state == "completed" else roll["reason"]
    return report
