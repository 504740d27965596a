"""Device profiles: what a device offers (RAM, bandwidth, power) and what each engine costs on it.

A profile is JSON, measured on the device (``edgegen profile``) or written by hand from published
figures for a device we cannot reach (``plan/profiles/*.json``, each citing its sources). Fields
(units in the names; every field required unless marked optional):

    name, source                       what the device is; "measured by edgegen profile ..." or citations
    ram_bytes, cores, threads          memory, physical cores, the thread count the costs are for
    read_bandwidth_bytes_per_s         sustained read bandwidth at ``threads``
    engines.<llamacpp|ort>:
        decode_ns_per_weight           {storage type: ns per weight read per decoded token}
                                       (GGUF types: Q4_0, Q4_K, Q8_0, F16 ...; ONNX: INT4, INT8, FP16, FP32)
        token_overhead_ms              per decoded token, outside the weight matrices
        attn_ns_per_kv_elem            per cached K/V element read per decoded token (context cost)
        prefill_ns_per_weight          per weight per prompt token (batched prefill)
        base_rss_bytes                 resident memory of a loaded engine besides weights and KV cache
        kv_bytes_per_elem              2 (llama.cpp F16 cache), 4 (ONNX Runtime GenAI fp32 I/O on CPU)
        weight_residency               resident weight bytes / weight bytes in the file (1.0 = all of it)
    power (optional): active_w, idle_w, source ("measured-rapl" | "measured-battery" | a citation)

Storage types a profile does not name are priced from ``compress.speed.DECODE_NS_PER_WEIGHT``
(llama.cpp's relative costs), scaled by the median ratio of the types it does name.
``load_profile`` raises ``InvalidProfileError`` naming every missing or bad field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.compress.speed import DECODE_NS_PER_WEIGHT
from edgegen.errors import InvalidProfileError, OutputError
from edgegen.runtime.base import EngineKind

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
ENGINE_FIELDS = ("decode_ns_per_weight", "token_overhead_ms", "attn_ns_per_kv_elem", "prefill_ns_per_weight",
                 "base_rss_bytes", "kv_bytes_per_elem", "weight_residency")
TOP_FIELDS = ("name", "source", "ram_bytes", "cores", "threads", "read_bandwidth_bytes_per_s", "engines")
# ONNX weight-only types priced like the llama.cpp type of the same width when a profile lacks them.
_ONNX_ALIAS = {"INT4": "Q4_0", "INT8": "Q8_0", "FP16": "F16", "FP32": "F32"}


@dataclass(frozen=True)
class EngineCosts:
    decode_ns_per_weight: dict[str, float]
    token_overhead_ms: float
    attn_ns_per_kv_elem: float
    prefill_ns_per_weight: float
    base_rss_bytes: int
    kv_bytes_per_elem: int
    weight_residency: float

    def ns_per_weight(self, storage_type: str) -> float:
        """Cost of one weight of ``storage_type``; unnamed types scaled from llama.cpp's relative costs."""
        t = storage_type.upper()
        if t in self.decode_ns_per_weight:
            return self.decode_ns_per_weight[t]
        ref = {k: v for k, v in self.decode_ns_per_weight.items() if _ONNX_ALIAS.get(k, k) in DECODE_NS_PER_WEIGHT}
        ratios = [v / DECODE_NS_PER_WEIGHT[_ONNX_ALIAS.get(k, k)] for k, v in ref.items()]
        scale = float(np.median(ratios)) if ratios else 1.0
        return DECODE_NS_PER_WEIGHT.get(_ONNX_ALIAS.get(t, t), max(DECODE_NS_PER_WEIGHT.values())) * scale


@dataclass(frozen=True)
class Power:
    active_w: float
    idle_w: float
    source: str


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    source: str
    ram_bytes: int
    cores: int
    threads: int
    read_bandwidth_bytes_per_s: float
    engines: dict[EngineKind, EngineCosts]
    power: Power | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["engines"] = {k.value: asdict(v) for k, v in self.engines.items()}
        return d

    def save(self, path: Path) -> None:
        try:
            Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc


def _num(where: str, v: Any, bad: list[str], *, integer: bool = False, zero_ok: bool = False) -> Any:
    """``v`` as a positive (or non-negative) number; otherwise records ``where`` in ``bad``."""
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if zero_ok else v > 0)
          and (not integer or float(v).is_integer()))
    if not ok:
        bad.append(f"{where} (got {v!r})")
        return 1
    return int(v) if integer else float(v)


def _engine_costs(name: str, e: Any, bad: list[str]) -> EngineCosts | None:
    if not isinstance(e, dict):
        bad.append(f"engines.{name}")
        return None
    missing = [f"engines.{name}.{f}" for f in ENGINE_FIELDS if f not in e]
    if missing:
        bad += missing
        return None
    costs = e["decode_ns_per_weight"]
    if not isinstance(costs, dict) or not costs:
        bad.append(f"engines.{name}.decode_ns_per_weight (needs at least one storage type)")
        costs = {}
    w = f"engines.{name}."
    return EngineCosts(
        decode_ns_per_weight={t.upper(): _num(f"{w}decode_ns_per_weight.{t}", v, bad) for t, v in costs.items()},
        token_overhead_ms=_num(w + "token_overhead_ms", e["token_overhead_ms"], bad, zero_ok=True),
        attn_ns_per_kv_elem=_num(w + "attn_ns_per_kv_elem", e["attn_ns_per_kv_elem"], bad, zero_ok=True),
        prefill_ns_per_weight=_num(w + "prefill_ns_per_weight", e["prefill_ns_per_weight"], bad),
        base_rss_bytes=_num(w + "base_rss_bytes", e["base_rss_bytes"], bad, integer=True),
        kv_bytes_per_elem=_num(w + "kv_bytes_per_elem", e["kv_bytes_per_elem"], bad, integer=True),
        weight_residency=_num(w + "weight_residency", e["weight_residency"], bad),
    )


def profile_from_dict(data: Any, origin: str = "profile") -> DeviceProfile:
    """Validate a parsed profile; ``InvalidProfileError`` lists every missing or invalid field."""
    if not isinstance(data, dict):
        raise InvalidProfileError(f"{origin} is not a JSON object")
    bad: list[str] = [f for f in TOP_FIELDS if f not in data]
    engines: dict[EngineKind, EngineCosts] = {}
    raw = data.get("engines")
    if "engines" in data and (not isinstance(raw, dict) or not raw):
        bad.append("engines (needs llamacpp and/or ort)")
        raw = {}
    for name, e in (raw or {}).items():
        try:
            kind = EngineKind(name)
        except ValueError:
            bad.append(f"engines.{name} (unknown engine: llamacpp or ort)")
            continue
        costs = _engine_costs(name, e, bad)
        if costs is not None:
            engines[kind] = costs
    power = None
    p = data.get("power")
    if p is not None:
        if not isinstance(p, dict) or any(k not in p for k in ("active_w", "idle_w", "source")):
            bad.append("power (needs active_w, idle_w, source)")
        else:
            power = Power(_num("power.active_w", p["active_w"], bad),
                          _num("power.idle_w", p["idle_w"], bad, zero_ok=True), str(p["source"]))
    if bad:
        raise InvalidProfileError(f"{origin} misses or has invalid fields: {', '.join(bad)}")
    prof = DeviceProfile(
        name=str(data["name"]), source=str(data["source"]),
        ram_bytes=_num("ram_bytes", data["ram_bytes"], bad, integer=True),
        cores=_num("cores", data["cores"], bad, integer=True),
        threads=_num("threads", data["threads"], bad, integer=True),
        read_bandwidth_bytes_per_s=_num("read_bandwidth_bytes_per_s", data["read_bandwidth_bytes_per_s"], bad),
        engines=engines, power=power, notes=dict(data.get("notes") or {}),
    )
    if bad:
        raise InvalidProfileError(f"{origin} misses or has invalid fields: {', '.join(bad)}")
    return prof


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_profile(spec: str | Path) -> DeviceProfile:
    """A profile from a JSON path, or the name of a shipped one (``builtin_profiles()``)."""
    return profile_json(spec)[1]


def profile_json(spec: str | Path) -> tuple[dict[str, Any], DeviceProfile]:
    """(the JSON as written, the checked ``DeviceProfile``) of a path or a shipped profile's name;
    ``InvalidProfileError`` for a missing, unreadable or incomplete one."""
    path = Path(spec)
    if not path.exists() and (BUILTIN_DIR / f"{spec}.json").is_file():
        path = BUILTIN_DIR / f"{spec}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidProfileError(
            f"no profile {spec}: give a JSON file or one of {', '.join(builtin_profiles())}") from None
    except (OSError, ValueError) as exc:
        raise InvalidProfileError(f"cannot read the profile {path}: {exc}") from exc
    return data, profile_from_dict(data, str(path))
