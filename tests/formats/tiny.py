"""Tiny random Llama-layout folders written with numpy (no torch): for tests of the tokenizer path."""

from __future__ import annotations

import json
from pathlib import Path

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
