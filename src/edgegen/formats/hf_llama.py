"""The Llama family in Hugging Face layout, mapped onto llama.cpp's GGUF layout. Pure: values in, values out.

Covered ``model_type``s and what they become:

    llama    -> GGUF arch ``llama``  (Llama 1/2/3.x, SmolLM/SmolLM2, TinyLlama, stories260K)
    mistral  -> GGUF arch ``llama``  (same tensors; sliding-window attention is not carried over)
    qwen2    -> GGUF arch ``qwen2``  (q/k/v biases; NEOX rotary, so no q/k permutation)

``parse_config`` reads config.json (transformers v4 ``rope_theta``/``rope_scaling`` and v5
``rope_parameters`` spellings) into ``LlamaHParams``; ``gguf_name`` maps one HF tensor name to its
GGUF name and ``prepare`` applies the only layout change needed: HF stores Llama's q/k projections
in "rotate-half" order, llama.cpp's ``llama`` arch wants the original interleaved order, so rows
are permuted per head. ``rope_freq_factors`` computes llama 3.1's ``rope_freqs`` tensor.

Not covered (refused with UnsupportedArchitectureError): other model types (gpt2, phi, gemma,
smollm3, MoE...), activations other than SiLU, MLP biases, rope scaling other than linear/llama3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "linear" | "llama3"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class LlamaHParams:
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

    @property
    def permute_qk(self) -> bool:
        return self.arch == "llama"


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


def parse_config(cfg: dict[str, Any]) -> LlamaHParams:
    """Hyperparameters of a supported model; UnsupportedArchitectureError for anything else."""
    model_type = cfg.get("model_type")
    if model_type not in GGUF_ARCH:
        archs = ", ".join(cfg.get("architectures") or []) or "unknown"
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} ({archs}) is not supported; edgegen converts {', '.join(GGUF_ARCH)}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(f"activation {act!r} is not supported (Llama-family models use silu)")
    if cfg.get("mlp_bias"):
        raise UnsupportedArchitectureError("MLP biases (mlp_bias=true) are not supported")
    n_embd, n_head = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or n_embd // n_head
    if n_head % n_head_kv:
        raise InvalidModelError(f"config.json: {n_head} attention heads do not divide into {n_head_kv} kv heads")
    theta, scaling = _rope(cfg)
    tie = cfg.get("tie_word_embeddings")
    return LlamaHParams(
        model_type=model_type, arch=GGUF_ARCH[model_type],
        n_layer=_int(cfg, "num_hidden_layers"), n_embd=n_embd, n_ff=_int(cfg, "intermediate_size"),
        n_head=n_head, n_head_kv=int(n_head_kv), head_dim=int(head_dim),
        n_ctx=int(cfg.get("max_position_embeddings") or 2048),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        vocab_size=_int(cfg, "vocab_size"), tie_embeddings=None if tie is None else bool(tie),
        rope_scaling=scaling,
    )


_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")  # a buffer some old checkpoints saved


def gguf_name(hf_name: str, hp: LlamaHParams) -> str | None:
    """The GGUF tensor name for an HF tensor, None for tensors to drop; raise for unknown ones."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    if _IGNORED.match(hf_name):
        return None
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER and int(m.group(1)) < hp.n_layer:
        return f"blk.{int(m.group(1))}.{_LAYER[m.group(2)]}"
    raise UnsupportedArchitectureError(
        f"tensor {hf_name} has no place in a {hp.arch} GGUF; this {hp.model_type} variant is not supported"
    )


def expected_names(hp: LlamaHParams, has_output: bool) -> list[str]:
    """GGUF tensors llama.cpp requires (biases are optional)."""
    names = ["token_embd.weight", "output_norm.weight"] + (["output.weight"] if has_output else [])
    for i in range(hp.n_layer):
        names += [f"blk.{i}.{n}" for n in _LAYER.values() if not n.endswith(".bias")]
    return names


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> interleaved order, per head; works on weights [out, in] and biases [out]."""
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def prepare(gguf_tensor: str, w: np.ndarray, hp: LlamaHParams) -> np.ndarray:
    """Apply the layout change a tensor needs before it is written (only q/k of the llama arch)."""
    if hp.permute_qk:
        if gguf_tensor.endswith((".attn_q.weight", ".attn_q.bias")):
            return unpermute_rotary(w, hp.n_head)
        if gguf_tensor.endswith((".attn_k.weight", ".attn_k.bias")):
            return unpermute_rotary(w, hp.n_head_kv)
    return w


def rope_freq_factors(hp: LlamaHParams) -> np.ndarray | None:
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


def write_hparams(writer: Any, hp: LlamaHParams) -> None:
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
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim * hp.n_head != hp.n_embd:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_vocab_size(hp.vocab_size)
    if hp.rope_scaling is not None and hp.rope_scaling.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_scaling.factor)
