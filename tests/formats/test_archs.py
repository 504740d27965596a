"""Differential test of the HF -> GGUF tensor mapping: llama.cpp on our GGUF vs transformers on the folder.

Tiny random models (2 layers, d=64, GQA 4/2) saved by transformers, one per covered variant:
    llama    attention biases, untied lm_head, llama3 rope scaling (rope_freqs tensor)
    mistral  head_dim (32) != hidden/heads (16): key/value length keys
    qwen2    q/k/v biases, NEOX rotary (no permutation), tied embeddings
    qwen3    q/k norms, head_dim (32) != hidden/heads, untied lm_head
    gemma3   norms stored as w for x * (1 + w), four norms per layer, GELU, embedding scale, layer 0
             sliding-window (window 8 < 24 tokens) with its own rotary base, layer 1 global
    phi3     fused qkv_proj and gate_up_proj, partial rotary (half of each head)
Logits agree to ~0.2% of their range (llama.cpp keeps its KV cache in F16); a missing q/k permutation,
a permutation where none belongs, or missing rope factors give errors of the size of the logits
themselves (the negative controls below make sure the comparison can fail).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgegen.formats import hf_arch
from edgegen.formats.convert import convert_model
from edgegen.runtime.engine import Engine
from tests.conftest import STORIES_DIR
from tests.formats.tiny import hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IDS = [1, 37, 250, 99, 400, 12, 7, 300, 45, 46, 47, 200, 201, 5, 9, 11, 100, 101, 102, 103, 104, 105, 106, 107]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """kind -> (HF folder, transformers' logits for IDS)."""
    made: dict[str, tuple[Path, np.ndarray]] = {}

    def make(kind: str) -> tuple[Path, np.ndarray]:
        if kind not in made:
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(hf_config(kind)).eval()
            # not named after the kind: a name saying "phi3" switches on llama.cpp's Phi-3 token rule
            # (llama-vocab.cpp), which the converter then writes around (tokenizer.gguf_model_name)
            folder = tmp_path_factory.mktemp("hf")
            model.save_pretrained(folder)
            for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
                shutil.copy(STORIES_DIR / name, folder)
            with torch.no_grad():
                logits = model(torch.tensor([IDS])).logits[0].float().numpy()
            made[kind] = (folder, logits)
        return made[kind]

    return make


def _llama_cpp_logits(folder: Path, out: Path) -> np.ndarray:
    gguf_path = convert_model(folder, out, dtype="f32")
    with Engine(gguf_path, n_ctx=64, n_threads=1, logits_all=True) as engine:
        return engine.logits(IDS)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"])
def test_llama_cpp_matches_transformers(kind: str, tiny, tmp_path: Path) -> None:
    folder, want = tiny(kind)
    got = _llama_cpp_logits(folder, tmp_path / "m.gguf")
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) < 0.02 * scale
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("kind, sabotage", [
    ("llama", "no permutation"), ("qwen2", "permuted q"), ("llama", "no rope factors"),
    ("gemma3", "no norm shift"),
])
def test_negative_controls_fail_the_comparison(kind: str, sabotage: str, tiny, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder, want = tiny(kind)
    if sabotage == "no permutation":
        monkeypatch.setattr(hf_arch, "prepare", lambda name, w, hp: w)
    elif sabotage == "permuted q":
        monkeypatch.setattr(hf_arch, "prepare", lambda name, w, hp: hf_arch.unpermute_rotary(w, hp.n_head)
                            if name.endswith("attn_q.weight") else w)
    elif sabotage == "no norm shift":
        monkeypatch.setitem(hf_arch.ARCHS, "gemma3_text",
                            dataclasses.replace(hf_arch.ARCHS["gemma3_text"], norm_shift=0.0))
    else:
        monkeypatch.setattr(hf_arch, "rope_freq_factors", lambda hp: None)
    got = _llama_cpp_logits(folder, tmp_path / "bad.gguf")
    assert float(np.abs(got - want).max()) > 0.2 * float(np.abs(want).max())
