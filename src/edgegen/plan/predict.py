"""The planner's predictions and choice: pure functions of ``ModelFacts`` and a ``DeviceProfile``.

Per variant (model x engine x format) at a context of ``n_ctx`` tokens, a prompt of ``n_prompt``
tokens and ``n_gen`` generated tokens, at the profile's thread count:

    decode ms/token at position p  = sum_types(weights_read[t] x ns_per_weight[t]) x 1e-6
                                     + token_overhead_ms + attn_ns_per_kv_elem x kv_elems_per_token x p x 1e-6
    decode tok/s                   = 1000 / (ms/token at the mean position n_prompt + n_gen/2)
    TTFT s                         = n_prompt x n_weights_read x prefill_ns_per_weight x 1e-9
                                     + one decode step at position n_prompt
    RAM bytes                      = base_rss + weight_bytes x weight_residency
                                     + kv_elems_per_token x kv_positions x kv_bytes_per_elem
                                     + logits: n_prompt x n_vocab x 4 for ONNX Runtime GenAI (its graph
                                       returns every prompt position's logits), 0 for llama.cpp (last only)
    energy J/token                 = power.active_w x s/token          (label: estimated, with the power's source)

``kv_positions`` is ``n_ctx`` for llama.cpp (it allocates the whole cache at load) and
``n_prompt + n_gen`` for ONNX Runtime GenAI on CPU (its cache grows with the sequence).
The matrix term is ``compress.speed``'s per-weight model with the profile's constants. ``choose``
ranks the variants that meet every constraint by decode speed; when none does it raises
``PlanRefusedError`` naming, per variant, what does not fit, and recommends the variant that fits RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import PlanRefusedError
from edgegen.plan.facts import ModelFacts
from edgegen.plan.profile import DeviceProfile
from edgegen.runtime.base import EngineKind


@dataclass(frozen=True)
class Workload:
    n_ctx: int = 2048
    n_prompt: int = 256
    n_gen: int = 128


@dataclass(frozen=True)
class Constraints:
    max_ram_bytes: int | None = None  # defaults to the profile's RAM
    min_tok_s: float | None = None
    max_j_per_token: float | None = None


@dataclass
class Prediction:
    model: str
    engine: str
    format: str
    variant: str
    ram_bytes: int
    ram_parts: dict[str, int]  # weights, kv_cache, runtime
    ttft_s: float
    decode_tok_s: float
    j_per_token: float | None
    energy_source: str  # "estimated (power: <source>)" or "unknown (profile has no power figures)"
    fits: bool = True
    violations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decode_ms(facts: ModelFacts, profile: DeviceProfile, position: float) -> float:
    """Predicted milliseconds per decoded token with ``position`` tokens already in the cache."""
    c = profile.engines[facts.engine]
    matrices = sum(n * c.ns_per_weight(t) for t, n in facts.weights_read.items()) * 1e-6
    return matrices + c.token_overhead_ms + c.attn_ns_per_kv_elem * facts.kv_elems_per_token * position * 1e-6


def ram_parts(facts: ModelFacts, profile: DeviceProfile, w: Workload) -> dict[str, int]:
    c = profile.engines[facts.engine]
    positions = w.n_ctx if facts.engine is EngineKind.LLAMACPP else min(w.n_ctx, w.n_prompt + w.n_gen)
    return {"weights": int(facts.weight_bytes * c.weight_residency),
            "kv_cache": int(facts.kv_elems_per_token * positions * c.kv_bytes_per_elem),
            "logits": logits_bytes(facts, w.n_prompt),
            "runtime": int(c.base_rss_bytes)}


def logits_bytes(facts: ModelFacts, n_prompt: int) -> int:
    """Host memory of the prefill's logits: ONNX Runtime GenAI's graph returns all positions (float32)."""
    return n_prompt * facts.n_vocab * 4 if facts.engine is EngineKind.ORT else 0


def predict(facts: ModelFacts, profile: DeviceProfile, w: Workload = Workload()) -> Prediction:
    """One variant's predicted RAM, TTFT, decode speed and energy; ``KeyError``-free: the caller
    checks ``facts.engine in profile.engines`` (``plan`` reports a missing engine as a violation)."""
    c = profile.engines[facts.engine]
    ms = decode_ms(facts, profile, w.n_prompt + w.n_gen / 2)
    prefill_s = w.n_prompt * facts.n_weights_read * c.prefill_ns_per_weight * 1e-9
    ttft = prefill_s + decode_ms(facts, profile, w.n_prompt) / 1e3
    parts = ram_parts(facts, profile, w)
    if profile.power is not None:
        joules: float | None = profile.power.active_w * ms / 1e3
        source = f"estimated (power: {profile.power.source})"
    else:
        joules, source = None, "unknown (profile has no power figures)"
    return Prediction(model=facts.path, engine=facts.engine.value, format=facts.format.value, variant=facts.variant,
                      ram_bytes=sum(parts.values()), ram_parts=parts, ttft_s=ttft, decode_tok_s=1e3 / ms,
                      j_per_token=joules, energy_source=source)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan(variants: Sequence[ModelFacts], profile: DeviceProfile, w: Workload = Workload(),
         limits: Constraints = Constraints()) -> list[Prediction]:
    """Predictions for every variant with its constraint violations, best (fastest that fits) first."""
    cap = min(limits.max_ram_bytes or profile.ram_bytes, profile.ram_bytes)
    out: list[Prediction] = []
    for f in variants:
        if f.engine not in profile.engines:
            p = Prediction(f.path, f.engine.value, f.format.value, f.variant, 0, {}, 0.0, 0.0, None, "unknown",
                           fits=False,
                           violations=[f"the profile {profile.name} has no costs for the {f.engine.value} engine"])
            out.append(p)
            continue
        p = predict(f, profile, w)
        if p.ram_bytes > cap:
            parts = ", ".join(f"{k} {_gib(v)}" for k, v in p.ram_parts.items())
            p.violations.append(f"needs {_gib(p.ram_bytes)} of RAM ({parts}) at context {w.n_ctx}, "
                                f"limit {_gib(cap)}")
        if limits.min_tok_s is not None and p.decode_tok_s < limits.min_tok_s:
            p.violations.append(f"decodes {p.decode_tok_s:.1f} tok/s, below --min-tok-s {limits.min_tok_s:g}")
        if limits.max_j_per_token is not None:
            if p.j_per_token is None:
                p.violations.append("energy unknown: the profile has no power figures")
            elif p.j_per_token > limits.max_j_per_token:
                p.violations.append(
                    f"needs {p.j_per_token:.3f} J/token, above --max-j-per-token {limits.max_j_per_token:g}")
        p.fits = not p.violations
        out.append(p)
    out.sort(key=lambda p: (not p.fits, -p.decode_tok_s))
    return out


# Bits per weight of the storage types a re-quantization could target (gguf-py's GGML_QUANT_SIZES:
# block bytes x 8 / block weights), highest quality first.
RETARGET_BITS = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5, "Q4_0": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625}


def retyped(facts: ModelFacts, storage_type: str) -> ModelFacts:
    """``facts`` as if every weight were re-quantized to ``storage_type`` (a GGUF the user could make
    with ``edgegen compress`` or llama.cpp's quantizer); the embedding table keeps its share."""
    from dataclasses import replace

    bits = RETARGET_BITS[storage_type]
    n_read = facts.n_weights_read
    old_bits = 8 * facts.weight_bytes / max(n_read, 1)
    return replace(facts, path=f"{facts.path} as {storage_type}", weights_read={storage_type: n_read},
                   weight_bytes=int(facts.weight_bytes * min(1.0, bits / old_bits)))


def choose(ranked: Sequence[Prediction], variants: Sequence[ModelFacts], profile: DeviceProfile,
           w: Workload, limits: Constraints = Constraints()) -> Prediction:
    """The first variant that fits; else ``PlanRefusedError`` naming what does not fit in each variant
    and recommending a re-quantization of the given models that meets every constraint (or saying
    that none does)."""
    if ranked and ranked[0].fits:
        return ranked[0]
    why = "; ".join(f"{p.model} [{p.engine} {p.variant}]: {', '.join(p.violations)}" for p in ranked)
    candidates = [retyped(f, t) for f in variants if f.engine in profile.engines and f.engine is EngineKind.LLAMACPP
                  for t in RETARGET_BITS]
    ok = [p for p in plan(candidates, profile, w, limits) if p.fits]
    if ok:
        best = max(ok, key=lambda p: RETARGET_BITS[p.variant])  # the highest-precision variant that fits
        advice = (f" Recommended instead: {best.model} (edgegen compress), which needs {_gib(best.ram_bytes)} "
                  f"and decodes ~{best.decode_tok_s:.1f} tok/s.")
    else:
        advice = (f" No re-quantization fits {profile.name} at context {w.n_ctx} either: "
                  "use a smaller model or a shorter --ctx.")
    raise PlanRefusedError(f"nothing fits {profile.name}: {why}.{advice}")
