"""Pure pieces of the converter: rotary permutation maths, config parsing, SentencePiece protobuf, tokenizer rules."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError
from edgegen.formats import hf_arch, spm_model, tokenizer
from tests.conftest import STORIES_DIR

# ---- rotary permutation ------------------------------------------------------------------------


def _rope_hf(q: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """transformers' rotate-half RoPE on one head: pairs (i, i + d/2)."""
    d = q.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.concatenate([np.cos(ang)] * 2), np.concatenate([np.sin(ang)] * 2)
    rot = np.concatenate([-q[d // 2:], q[: d // 2]])
    return q * cos + rot * sin


def _rope_interleaved(q: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM on one head: pairs (2i, 2i + 1)."""
    d = q.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    x0, x1 = q[0::2], q[1::2]
    out = np.empty_like(q)
    out[0::2] = x0 * np.cos(ang) - x1 * np.sin(ang)
    out[1::2] = x0 * np.sin(ang) + x1 * np.cos(ang)
    return out


@settings(max_examples=40, deadline=None)
@given(n_head=st.integers(1, 4), half=st.integers(1, 8), n_in=st.integers(1, 6), pos=st.integers(0, 300),
       seed=st.integers(0, 2**31))
def test_permuted_projection_under_interleaved_rope_equals_hf_rope(n_head, half, n_in, pos, seed) -> None:
    rng = np.random.default_rng(seed)
    d = 2 * half
    w = rng.standard_normal((n_head * d, n_in))
    x = rng.standard_normal(n_in)
    hf = (w @ x).reshape(n_head, d)
    ours = (hf_arch.unpermute_rotary(w, n_head) @ x).reshape(n_head, d)
    for h in range(n_head):
        a = _rope_hf(hf[h], pos, 10000.0)
        b = _rope_interleaved(ours[h], pos, 10000.0)
        # The same rotated vector in the permuted order, so attention scores (dot products) are equal.
        assert np.allclose(hf_arch.unpermute_rotary(a, 1), b)
        assert np.isclose(a @ _rope_hf(hf[h], pos + 3, 10000.0), b @ _rope_interleaved(ours[h], pos + 3, 10000.0))


def test_permutation_of_bias_matches_weight_rows() -> None:
    w = np.arange(24, dtype=np.float32).reshape(12, 2)
    b = w[:, 0].copy()
    assert np.array_equal(hf_arch.unpermute_rotary(b, 3), hf_arch.unpermute_rotary(w, 3)[:, 0])


# ---- config.json -------------------------------------------------------------------------------

_BASE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
         "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512}


def test_rope_spellings_of_transformers_v4_and_v5() -> None:
    v4 = hf_arch.parse_config({**_BASE, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    v5 = hf_arch.parse_config({**_BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}})
    assert v4.rope_theta == v5.rope_theta == 5e5
    assert v4.rope_scaling == v5.rope_scaling == hf_arch.RopeScaling("linear", 2.0)
    assert hf_arch.parse_config(_BASE).rope_theta == 10000.0


@pytest.mark.parametrize("change", [
    {"model_type": "gpt2"}, {"model_type": None}, {"model_type": "smollm3"}, {"hidden_act": "gelu"},
    {"mlp_bias": True}, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
])
def test_unsupported_configs(change: dict) -> None:
    with pytest.raises(UnsupportedArchitectureError):
        hf_arch.parse_config({**_BASE, **change})


def test_invalid_config_values() -> None:
    with pytest.raises(InvalidModelError):
        hf_arch.parse_config({**_BASE, "hidden_size": "64"})
    with pytest.raises(InvalidModelError):
        hf_arch.parse_config({**_BASE, "num_key_value_heads": 3})


def test_llama3_rope_factors_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    hp = hf_arch.parse_config({**_BASE, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
                                "rope_parameters": rope})
    ours = hf_arch.rope_freq_factors(hp)
    assert ours is not None and ours.shape == (32,)
    assert np.allclose(ours, (plain / scaled.double()).numpy(), rtol=1e-5)


def test_tensor_names() -> None:
    hp = hf_arch.parse_config(_BASE)
    assert hf_arch.gguf_name("model.layers.4.self_attn.k_proj.weight", hp) == "blk.4.attn_k.weight"
    assert hf_arch.gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq", hp) is None
    for bad in ("model.layers.5.mlp.up_proj.weight", "model.layers.0.block_sparse_moe.gate.weight"):
        with pytest.raises(UnsupportedArchitectureError):
            hf_arch.gguf_name(bad, hp)


# ---- SentencePiece protobuf --------------------------------------------------------------------


def test_stories_tokenizer_model_matches_its_tokenizer_json() -> None:
    sp = spm_model.parse_sentencepiece((STORIES_DIR / "tokenizer.model").read_bytes())
    vocab = json.loads((STORIES_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(sp.pieces) == 512 and {p: i for i, p in enumerate(sp.pieces)} == vocab
    assert sp.types[:4] == [spm_model.UNKNOWN, spm_model.CONTROL, spm_model.CONTROL, spm_model.BYTE]
    assert sp.model_type == 2 and sp.add_dummy_prefix is True
    assert (sp.unk_id, sp.bos_id, sp.eos_id) == (0, 1, 2)
    assert sp.scores[259] > sp.scores[400]  # earlier merges score higher


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32 -> 64-bit two's complement, as protobuf does
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)


def test_protobuf_negative_ids_defaults_and_garbage() -> None:
    piece = _field(1, 2, b"hi") + _field(2, 5, struct.pack("<f", -1.5))
    trainer = _field(3, 0, _varint(2)) + _field(43, 0, _varint(-1))  # BPE, pad_id -1
    model = _field(1, 2, piece) + _field(2, 2, trainer) + _field(3, 2, _field(3, 0, b"\x00"))
    sp = spm_model.parse_sentencepiece(model)
    assert sp.pieces == ["hi"] and sp.scores == [-1.5] and sp.types == [spm_model.NORMAL]
    assert sp.pad_id == -1 and sp.model_type == 2 and sp.add_dummy_prefix is False
    for bad in (b"", b"\x0a\x05ab", b"\x0f\x00"):
        with pytest.raises(InvalidModelError):
            spm_model.parse_sentencepiece(bad)


# ---- tokenizer rules ---------------------------------------------------------------------------


def test_pre_tokenizer_regexes_are_the_ones_transformers_knows() -> None:
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    splits = getattr(mapping, "GGUF_PRE_TOKENIZER_SPLITS", None)
    if splits is None:
        pytest.skip("this transformers version has no GGUF_PRE_TOKENIZER_SPLITS table")
    assert splits["llama-bpe"] == tokenizer.LLAMA3_SPLIT
    assert splits["qwen2"] == tokenizer.QWEN2_SPLIT


def test_unknown_pre_tokenizers_are_refused() -> None:
    for pre in ({"type": "Whitespace"}, {"type": "ByteLevel", "add_prefix_space": True},
                {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\d+"},
                                                       "behavior": "Isolated"}, {"type": "ByteLevel"}]}):
        with pytest.raises(UnsupportedArchitectureError):
            tokenizer.bpe_pre_name(pre)


def test_special_tokens_flags_and_chat_template(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(STORIES_DIR, folder)
    cfg = json.loads((folder / "config.json").read_text())
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.update(add_bos_token=False, add_eos_token=True, chat_template=[{"name": "default", "template": "{{x}}"}])
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    v = tokenizer.load_vocab(folder, cfg, 520)
    assert (v.add_bos, v.add_eos) == (False, True)
    assert v.chat_template == [{"name": "default", "template": "{{x}}"}]
    assert v.special_ids == {"bos": 1, "eos": 2, "unk": 0}
    assert len(v.tokens) == 520 and v.tokens[-1] == "[PAD519]" and v.types[-1] == spm_model.UNUSED
    (folder / "chat_template.jinja").write_text("{{ y }}")
    assert tokenizer.load_vocab(folder, cfg, 512).chat_template == "{{ y }}"
    with pytest.raises(InvalidModelError):
        tokenizer.load_vocab(folder, cfg, 100)  # more tokens than embedding rows


def test_tokenizer_json_of_another_kind_is_refused(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(STORIES_DIR, folder)
    (folder / "tokenizer.model").unlink()
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedArchitectureError):
        tokenizer.load_vocab(folder, {}, 512)


@pytest.mark.parametrize("cfg", [
    {"model_type": "qwen3", "num_experts": 8},  # Qwen3-MoE's config spelling under a dense model_type
    {"model_type": "phi3", "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}},
    {"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh", "head_dim": 16,
     "query_pre_attn_scalar": 144},  # Gemma 3 27B's query scaling, which llama.cpp does differently
    {"model_type": "gemma3_text", "hidden_activation": "silu"},
])
def test_unsupported_variants_of_covered_architectures(cfg: dict) -> None:
    with pytest.raises(UnsupportedArchitectureError):
        hf_arch.parse_config({**_BASE, **cfg})


def test_gemma3_reads_both_rotary_bases_and_the_layer_pattern() -> None:
    hp = hf_arch.parse_config({
        **_BASE, "model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
    })
    assert (hp.arch, hp.rope_theta, hp.rope_theta_swa, hp.swa_layers) == ("gemma3", 1e6, 1e4, (True, False))
    assert hp.tie_embeddings is True and hp.spec.norm_shift == 1.0
    assert hf_arch.gguf_name("model.layers.1.pre_feedforward_layernorm.weight", hp) == "blk.1.ffn_norm.weight"
    assert hf_arch.gguf_name("model.layers.1.post_attention_layernorm.weight", hp) == "blk.1.post_attention_norm.weight"
