"""Tiny random models for the converter tests.

``write_tiny_llama``: a Llama-layout folder written with numpy (no torch), for tests of the tokenizer path.
``hf_config``: the transformers config of a tiny random model of each covered architecture (2 layers,
d=64, GQA 4/2), with each architecture's quirks switched on; ``tiny_hf_folder`` saves one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_tiny_llama(folder: Path, vocab_size: int, d: int = 8, ff: int = 16, seed: int = 0) -> Path:
    """config.json + model.safetensors of a 1-layer Llama (2 heads, 1 kv head, tied embeddings)."""
    from safetensors.numpy import save_file

    cfg = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": d,
        "intermediate_size": ff, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": vocab_size, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "hidden_act": "silu",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    p = "model.layers.0."
    weights = {
        "model.embed_tokens.weight": w(vocab_size, d), "model.norm.weight": np.ones(d, np.float32),
        p + "input_layernorm.weight": np.ones(d, np.float32),
        p + "post_attention_layernorm.weight": np.ones(d, np.float32),
        p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(d // 2, d),
        p + "self_attn.v_proj.weight": w(d // 2, d), p + "self_attn.o_proj.weight": w(d, d),
        p + "mlp.gate_proj.weight": w(ff, d), p + "mlp.up_proj.weight": w(ff, d), p + "mlp.down_proj.weight": w(d, ff),
    }
    save_file(weights, str(folder / "model.safetensors"))
    return folder


_COMMON: dict[str, Any] = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.3,
    bos_token_id=1, eos_token_id=2,
)
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def hf_config(kind: str, **overrides: Any) -> Any:
    """A transformers config for ``kind`` (llama, mistral, qwen2, qwen3, gemma3, phi3); ``overrides``
    replace the common fields (e.g. ``vocab_size``, ``bos_token_id``)."""
    import transformers

    common = {**_COMMON, **overrides}
    if kind == "llama":
        return transformers.LlamaConfig(**common, attention_bias=True, tie_word_embeddings=False,
                                        rope_parameters=_LLAMA3_ROPE)
    if kind == "mistral":
        return transformers.MistralConfig(**common, head_dim=32, tie_word_embeddings=False)
    if kind == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=False)
    if kind == "gemma3":
        return transformers.Gemma3TextConfig(
            **common, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        )
    if kind == "phi3":
        return transformers.Phi3Config(**common, tie_word_embeddings=False, pad_token_id=0,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.5})
    if kind == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(f"no tiny config for {kind!r}")


def tiny_hf_folder(kind: str, folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random model of ``kind`` saved by transformers into ``folder`` (weights + config only)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(kind, **overrides))
    model.save_pretrained(folder)
    return folder
