"""Decoder-only Hugging Face architectures mapped onto llama.cpp's GGUF layout. Pure: values in, values out.

Covered ``model_type``s, what they become, and each one's quirks (as llama.cpp's own converter,
convert_hf_to_gguf.py and its conversion/*.py modules, handles them):

    llama        -> ``llama``   q/k rows permuted from HF's rotate-half order to interleaved pairs
    mistral      -> ``llama``   same tensors; sliding-window attention is not carried over
    qwen2        -> ``qwen2``   q/k/v biases; NEOX rotary (halves), so no permutation
    qwen3        -> ``qwen3``   per-head q/k RMS norms (``attn_q_norm``/``attn_k_norm``), NEOX rotary
    gemma3_text  -> ``gemma3``  RMSNorm weights stored as w where HF computes x * (1 + w): written as
                                1 + w (conversion/gemma.py ``norm_shift``); four norms per layer; GELU
                                (tanh); the sqrt(n_embd) embedding scale is applied by llama.cpp's graph
    phi3         -> ``phi3``    fused ``qkv_proj`` and ``gate_up_proj`` kept fused (``attn_qkv``,
                                ``ffn_up`` of 2 * n_ff rows, gate half first); NEOX rotary

Tensor names come from gguf-py's ``TensorNameMap`` for the target architecture (only tensor kinds in
``MODEL_TENSORS[arch]`` map), not from a table of our own. ``parse_config`` reads config.json
(transformers v4 ``rope_theta``/``rope_scaling`` and v5 ``rope_parameters``) into ``HParams``;
``prepare`` applies the layout changes above; ``rope_freq_factors`` computes llama 3.1's
``rope_freqs`` tensor.

Not covered (UnsupportedArchitectureError): other model types, Mixture-of-Experts layers (their
names map to no tensor of these architectures), MLP biases, other activations, rope scaling other
than linear/llama3 (so Phi-3's 128k ``longrope`` variants), Gemma's 27B query scaling.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError

_ATTN = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight")
_MLP = ("ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


@dataclass(frozen=True)
class ArchSpec:
    """What one HF ``model_type`` becomes in GGUF."""

    gguf_arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    activations: tuple[str, ...]  # accepted ``hidden_act`` / ``hidden_activation`` values
    layer_tensors: tuple[str, ...]  # per-layer GGUF tensors llama.cpp requires
    permute_qk: bool = False  # HF rotate-half -> interleaved pairs (llama's rotary)
    norm_shift: float = 0.0  # added to every norm weight (Gemma's RMSNorm scales by 1 + w)


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", ("silu",), _ATTN + _MLP, permute_qk=True),
    "mistral": ArchSpec("llama", ("silu",), _ATTN + _MLP, permute_qk=True),
    "qwen2": ArchSpec("qwen2", ("silu",), _ATTN + _MLP),
    "qwen3": ArchSpec("qwen3", ("silu",), _ATTN + _MLP + ("attn_q_norm.weight", "attn_k_norm.weight")),
    "gemma3_text": ArchSpec(
        "gemma3", ("gelu_pytorch_tanh",),
        _ATTN + _MLP + ("attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                        "post_ffw_norm.weight"),
        norm_shift=1.0,
    ),
    "phi3": ArchSpec("phi3", ("silu",), ("attn_norm.weight", "attn_qkv.weight", "attn_output.weight",
                                          "ffn_norm.weight", "ffn_up.weight", "ffn_down.weight")),
}
GGUF_ARCH = {k: v.gguf_arch for k, v in ARCHS.items()}


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "linear" | "llama3"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class HParams:
    model_type: str
    arch: str  # GGUF architecture name
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    rms_eps: float
    rope_theta: float
    vocab_size: int
    tie_embeddings: bool | None  # None: config does not say
    rope_scaling: RopeScaling | None = None
    rope_dim: int = 0  # rotated dimensions per head (0: head_dim)
    sliding_window: int | None = None
    rope_theta_swa: float | None = None  # rotary base of the sliding-window layers (gemma3)
    final_logit_softcap: float | None = None
    swa_layers: tuple[bool, ...] | None = None  # per layer: sliding-window attention (HF ``layer_types``)

    @property
    def spec(self) -> ArchSpec:
        return ARCHS[self.model_type]

    @property
    def permute_qk(self) -> bool:
        return self.spec.permute_qk


def _int(cfg: dict[str, Any], key: str) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InvalidModelError(f"config.json: {key} must be a positive integer, got {v!r}")
    return v


def _rope(cfg: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = cfg.get("rope_parameters") or {}  # transformers v5
    scaling = cfg.get("rope_scaling") or params  # transformers v4
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return theta, RopeScaling("linear", factor)
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3", factor, float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0)),
            int(scaling.get("original_max_position_embeddings", 8192)),
        )
    raise UnsupportedArchitectureError(f"rope scaling {kind!r} is not supported (only linear and llama3)")


def parse_config(cfg: dict[str, Any]) -> HParams:
    """Hyperparameters of a supported model; UnsupportedArchitectureError for anything else."""
    model_type = cfg.get("model_type")
    if model_type not in ARCHS:
        archs = ", ".join(cfg.get("architectures") or []) or "unknown"
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} ({archs}) is not supported; edgegen converts {', '.join(ARCHS)}"
        )
    spec = ARCHS[model_type]
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or spec.activations[0]
    if act not in spec.activations:
        raise UnsupportedArchitectureError(
            f"activation {act!r} is not supported for {model_type} (expected {', '.join(spec.activations)})"
        )
    if cfg.get("mlp_bias"):
        raise UnsupportedArchitectureError("MLP biases (mlp_bias=true) are not supported")
    if any(cfg.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise UnsupportedArchitectureError(f"{model_type} with Mixture-of-Experts layers is not supported")
    n_embd, n_head = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    if n_head % n_head_kv:
        raise InvalidModelError(f"config.json: {n_head} attention heads do not divide into {n_head_kv} kv heads")
    if spec.gguf_arch == "gemma3" and float(cfg.get("query_pre_attn_scalar") or head_dim) != head_dim:
        # llama.cpp scales queries by 1/sqrt(head_dim) for every gemma3 but the 27B (src/models/gemma3.cpp)
        raise UnsupportedArchitectureError("gemma3 with query_pre_attn_scalar != head_dim is not supported")
    theta, scaling = _rope(cfg)
    params = cfg.get("rope_parameters") or {}
    partial = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    rope_dim = int(partial * n_embd) // n_head if spec.gguf_arch == "phi3" else int(partial * head_dim)
    swa_theta = None
    if spec.gguf_arch == "gemma3":
        local = params.get("sliding_attention") if isinstance(params.get("sliding_attention"), dict) else {}
        full = params.get("full_attention") if isinstance(params.get("full_attention"), dict) else {}
        theta = float(full.get("rope_theta", cfg.get("rope_theta", 1_000_000.0)))
        swa_theta = float(local.get("rope_theta", cfg.get("rope_local_base_freq", 10000.0)))
    tie = cfg.get("tie_word_embeddings", True if spec.gguf_arch == "gemma3" else None)
    window = cfg.get("sliding_window")
    softcap = cfg.get("final_logit_softcapping")
    types = cfg.get("layer_types")
    swa_layers = tuple(t == "sliding_attention" for t in types) if isinstance(types, list) else None
    return HParams(
        model_type=model_type, arch=spec.gguf_arch,
        n_layer=_int(cfg, "num_hidden_layers"), n_embd=n_embd, n_ff=_int(cfg, "intermediate_size"),
        n_head=n_head, n_head_kv=int(n_head_kv), head_dim=head_dim,
        n_ctx=int(cfg.get("max_position_embeddings") or 2048),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        vocab_size=_int(cfg, "vocab_size"), tie_embeddings=None if tie is None else bool(tie),
        rope_scaling=scaling, rope_dim=rope_dim,
        sliding_window=int(window) if isinstance(window, int) and not isinstance(window, bool) else None,
        rope_theta_swa=swa_theta, final_logit_softcap=float(softcap) if softcap else None,
        swa_layers=swa_layers if spec.gguf_arch == "gemma3" else None,
    )


_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")  # a buffer some old checkpoints saved
_GLOBAL = ("token_embd.weight", "output_norm.weight")
_KNOWN = {*_GLOBAL, "output.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias",
          "attn_qkv.bias"}


@functools.lru_cache(maxsize=8)
def _name_map(arch: str, n_layer: int) -> Any:
    import gguf

    enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    return gguf.get_tensor_name_map(enum, n_layer)


def gguf_name(hf_name: str, hp: HParams) -> str | None:
    """The GGUF tensor name for an HF tensor (gguf-py's ``TensorNameMap``), None for tensors to drop;
    UnsupportedArchitectureError for tensors this architecture has no place for."""
    if _IGNORED.match(hf_name):
        return None
    name = _name_map(hp.arch, hp.n_layer).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    kind = name.split(".", 2)[-1] if name is not None and name.startswith("blk.") else name
    if kind not in _KNOWN and kind not in hp.spec.layer_tensors:  # e.g. Mixtral's router: llama.cpp
        name = None  # maps it for llama, but this converter writes no MoE layers
        raise UnsupportedArchitectureError(
            f"tensor {hf_name} has no place in a {hp.arch} GGUF; this {hp.model_type} variant is not supported"
        )
    return name


def expected_names(hp: HParams, has_output: bool) -> list[str]:
    """GGUF tensors llama.cpp requires (biases are optional)."""
    names = list(_GLOBAL) + (["output.weight"] if has_output else [])
    for i in range(hp.n_layer):
        names += [f"blk.{i}.{n}" for n in hp.spec.layer_tensors]
    return names


def expected_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Shape of each per-layer tensor kind (name after ``blk.N.``) and global tensor, from config.json."""
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    return {
        "attn_q.weight": (q, hp.n_embd), "attn_k.weight": (kv, hp.n_embd), "attn_v.weight": (kv, hp.n_embd),
        "attn_qkv.weight": (q + 2 * kv, hp.n_embd), "attn_output.weight": (hp.n_embd, q),
        "ffn_gate.weight": (hp.n_ff, hp.n_embd),
        "ffn_up.weight": (2 * hp.n_ff if hp.arch == "phi3" else hp.n_ff, hp.n_embd),
        "ffn_down.weight": (hp.n_embd, hp.n_ff),
        "attn_q_norm.weight": (hp.head_dim,), "attn_k_norm.weight": (hp.head_dim,),
        "attn_norm.weight": (hp.n_embd,), "ffn_norm.weight": (hp.n_embd,), "output_norm.weight": (hp.n_embd,),
        "post_attention_norm.weight": (hp.n_embd,), "post_ffw_norm.weight": (hp.n_embd,),
        "token_embd.weight": (hp.vocab_size, hp.n_embd), "output.weight": (hp.vocab_size, hp.n_embd),
    }


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> interleaved order, per head; works on weights [out, in] and biases [out]."""
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def prepare(gguf_tensor: str, w: np.ndarray, hp: HParams) -> np.ndarray:
    """Apply the change a tensor needs before it is written: q/k row order (llama), norm shift (gemma)."""
    if hp.spec.norm_shift and gguf_tensor.endswith("norm.weight"):
        return w + np.float32(hp.spec.norm_shift)
    if hp.permute_qk:
        if gguf_tensor.endswith((".attn_q.weight", ".attn_q.bias")):
            return unpermute_rotary(w, hp.n_head)
        if gguf_tensor.endswith((".attn_k.weight", ".attn_k.bias")):
            return unpermute_rotary(w, hp.n_head_kv)
    return w


def rope_freq_factors(hp: HParams) -> np.ndarray | None:
    """Llama 3.1 rope scaling as llama.cpp wants it: per-frequency divisors, float32 [head_dim/2]."""
    rs = hp.rope_scaling
    if rs is None or rs.kind != "llama3":
        return None
    low_wavelen = rs.original_context / rs.low_freq_factor
    high_wavelen = rs.original_context / rs.high_freq_factor
    factors = []
    for i in range(0, hp.head_dim, 2):
        wavelen = 2 * math.pi * hp.rope_theta ** (i / hp.head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rs.factor)
        else:
            smooth = (rs.original_context / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
            factors.append(1.0 / ((1 - smooth) / rs.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def write_hparams(writer: Any, hp: HParams) -> None:
    """The ``<arch>.*`` keys llama.cpp reads for these architectures."""
    import gguf

    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.rope_dim or hp.head_dim)
    if hp.head_dim * hp.n_head != hp.n_embd or hp.arch == "gemma3":
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_vocab_size(hp.vocab_size)
    if hp.arch == "phi3":  # llama.cpp reads 0 as "no sliding window" (conversion/phi.py)
        writer.add_sliding_window(hp.sliding_window or 0)
    if hp.arch == "gemma3" and hp.sliding_window:
        writer.add_sliding_window(hp.sliding_window)
        if hp.swa_layers is not None:
            writer.add_array(f"{hp.arch}.attention.sliding_window_pattern", list(hp.swa_layers))
        if hp.rope_theta_swa is not None:
            writer.add_key_value(f"{hp.arch}.rope.freq_base_swa", hp.rope_theta_swa, gguf.GGUFValueType.FLOAT32)
    if hp.final_logit_softcap:
        writer.add_final_logit_softcapping(hp.final_logit_softcap)
    if hp.rope_scaling is not None and hp.rope_scaling.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_scaling.factor)
