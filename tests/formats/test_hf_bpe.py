"""The byte-level BPE path on a real model: SmolLM2 as an HF folder (written by transformers) -> our GGUF.

Checked against the publisher's GGUF under llama.cpp: same vocabulary, merges and token types, same
tokens on awkward strings, the same logits as our dequantized F32 GGUF (transformers un-permutes q/k
when it loads a GGUF, our converter permutes them back), and the same greedy text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgegen.formats.convert import convert_model
from edgegen.formats.gguf_file import open_reader as open_reader_fast
from edgegen.formats.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT
from edgegen.runtime.engine import Engine, SamplingParams

pytestmark = pytest.mark.slow

TEXTS = [
    "Hello world",
    "  two  spaces\tand a tab\n\nand new lines  ",
    "héllo wörld, naïve café — ünïcödé 日本語の文章 🤖👍",
    "numbers 12345, 3.14159 and 1,000,000",
    "don't you'll I'M she's THEY'VE",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "def f(x):\n    return x**2  # square",
]


@pytest.fixture(scope="module")
def smol_hf_gguf(smol_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_model(smol_hf_dir, tmp_path_factory.mktemp("hf") / "smol-hf-f32.gguf", dtype="f32")


def _raw(field) -> bytes:
    return b"".join(bytes(p) for p in field.parts)  # key, type and value exactly as stored


def test_vocabulary_matches_the_publishers_gguf(smol_hf_gguf: Path, smollm2_q4_1: Path) -> None:
    ours, theirs = open_reader_fast(smol_hf_gguf), open_reader_fast(smollm2_q4_1)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
                "llama.context_length", "llama.rope.freq_base", "llama.attention.head_count_kv"):
        assert _raw(ours.fields[key]) == _raw(theirs.fields[key]), key
    assert ours.fields["tokenizer.ggml.model"].contents() == "gpt2"
    # transformers writes SmolLM2's tokenizer.json with plain ByteLevel (GPT-2's regex), not the
    # upstream Digits+ByteLevel, so the honest mapping is "gpt-2"; on this vocabulary (no multi-digit
    # tokens) it tokenizes exactly like the publisher's "smollm", as the next test shows.
    assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


@pytest.fixture(scope="module")
def ours(smol_hf_gguf: Path):
    with Engine(smol_hf_gguf, n_ctx=256, n_threads=1, logits_all=True) as engine:
        yield engine


def test_llama_cpp_tokenizes_like_the_publishers_gguf(ours: Engine, smollm2_q4_1: Path) -> None:
    import llama_cpp  # vocabulary only: the publisher's weights are not needed to tokenize

    theirs = llama_cpp.Llama(str(smollm2_q4_1), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            for special in (True, False):
                want = theirs.tokenize(text.encode(), add_bos=True, special=special)
                assert ours.tokenize(text, special=special) == want, (text, special)
    finally:
        theirs.close()


def test_same_logits_and_text_as_the_dequantized_gguf(ours: Engine, smol_f32: Path) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. The capital of France is"
    with Engine(smol_f32, n_ctx=256, n_threads=1, logits_all=True) as ref:
        ids = ref.tokenize(prompt)
        diff = float(np.abs(ours.logits(ids) - ref.logits(ids)).max())
        assert diff < 1e-3, diff
        greedy = SamplingParams.greedy(12)
        assert ours.complete(prompt, greedy).text == ref.complete(prompt, greedy).text
    reply = ours.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams.greedy(16))
    assert "Paris" in reply.text


# ---- pre-tokenizer mapping, judged by the HF tokenizers library itself -------------------------

_VARIANTS = {  # "gpt-2" is the real folder's own pre-tokenizer, checked against the publisher's GGUF above
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
}


@pytest.mark.parametrize("pre", sorted(_VARIANTS))
def test_pre_tokenizer_mapping_agrees_with_hf_tokenizers(pre: str, smol_hf_dir: Path, tmp_path: Path) -> None:
    """The SmolLM2 vocabulary under each mapped pre-tokenizer: llama.cpp (our GGUF) == HF tokenizers."""
    tokenizers = pytest.importorskip("tokenizers")
    llama_cpp = pytest.importorskip("llama_cpp")
    from tests.formats.tiny import write_tiny_llama

    folder = tmp_path / pre
    folder.mkdir()
    tj = json.loads((smol_hf_dir / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = _VARIANTS[pre]
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    shutil.copy(smol_hf_dir / "tokenizer_config.json", folder)
    write_tiny_llama(folder, vocab_size=49152)
    out = convert_model(folder, tmp_path / f"{pre}.gguf", dtype="f32")
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        assert vocab.metadata["tokenizer.ggml.pre"] == pre
        for text in TEXTS + ["year 2024: 1234567 apples", "ABC123def 42x"]:
            ours = vocab.tokenize(text.encode(), add_bos=False, special=True)  # HF always splits added tokens
            assert ours == hf.encode(text, add_special_tokens=False).ids, (pre, text)
    finally:
        vocab.close()
