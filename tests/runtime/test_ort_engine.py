"""The ONNX Runtime GenAI engine against the llama.cpp one: the same interface, the same answers.

stories260K (real weights) is exported to fp32 ONNX by ``edgegen export onnx``; its greedy story must
be llama2.c's documented one, and its logits must match llama.cpp's on the F32 GGUF of the same
weights. A tiny random Llama built from a config checks int4 export and the builder's EOS ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import (
    ContextOverflowError,
    EngineNotInstalledError,
    InvalidModelError,
    InvalidRequestError,
    UserInputError,
)
from edgegen.runtime.base import EngineKind, ModelFormat, TextEngine, detect_format, open_engine, resolve_engine
from edgegen.runtime.engine import SamplingParams, StreamStats
from tests.conftest import STORIES_TEXT

pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def ort(stories_onnx: Path):  # noqa: ANN201
    with open_engine(stories_onnx, n_ctx=256, n_threads=1) as engine:
        yield engine


def test_factory_picks_the_engine_from_the_artifact(stories_onnx: Path, stories_gguf: Path, ort) -> None:  # noqa: ANN001
    assert detect_format(stories_onnx) is ModelFormat.ONNX and detect_format(stories_gguf) is ModelFormat.GGUF
    assert resolve_engine(stories_onnx)[1] is EngineKind.ORT
    assert resolve_engine(stories_gguf, "auto")[1] is EngineKind.LLAMACPP
    assert type(ort).__name__ == "OrtEngine" and isinstance(ort, TextEngine)
    with pytest.raises(UserInputError, match="cannot run"):
        resolve_engine(stories_gguf, "ort")
    with pytest.raises(UserInputError, match="unknown engine"):
        resolve_engine(stories_gguf, "tensorrt")


def test_onnx_folder_without_genai_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(InvalidModelError, match="genai_config.json"):
        open_engine(tmp_path)


def test_missing_engine_package_is_one_clear_error(stories_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if the package were not installed
    with pytest.raises(EngineNotInstalledError, match=r"edgegen\[onnx\]"):
        open_engine(stories_onnx)


def test_greedy_story_is_llama2c_documented_one(ort) -> None:  # noqa: ANN001
    out = ort.complete("Once upon a time", SamplingParams.greedy(40))
    assert ("Once upon a time" + out.text).startswith(STORIES_TEXT[:120])
    assert out.prompt_tokens == len(ort.tokenize("Once upon a time"))
    assert out.finish_reason == "length" and out.completion_tokens == 40


def test_logits_match_llamacpp_on_the_same_weights(ort, stories_gguf: Path) -> None:  # noqa: ANN001
    with open_engine(stories_gguf, n_ctx=64, n_threads=1, logits_all=True) as ref:
        ids = ref.tokenize(STORIES_TEXT)[:48]
        assert ort.tokenize(STORIES_TEXT)[:48] == ids  # the source's tokenizer.json gives llama.cpp's ids
        a, b = ort.logits(ids), ref.logits(ids)
    assert a.shape == b.shape == (48, ort.n_vocab)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.97
    assert np.max(np.abs(a - b)) < 2e-2  # fp32 both sides; kernels differ only in summation order


def test_stream_stops_logprobs_and_cancellation(ort) -> None:  # noqa: ANN001
    full = ort.complete("Once upon a time", SamplingParams.greedy(30)).text
    cut = full.index("Lily") + len("Lily")
    stats = StreamStats()
    text = "".join(t.text for t in ort.stream("Once upon a time", SamplingParams.greedy(30, stop=("Lily",)), stats))
    assert text == full[: cut - len("Lily")] and stats.finish_reason == "stop"
    # logprobs are read from the distribution each token was drawn from: greedy tokens have the max
    toks = list(ort.stream("Once upon a time", SamplingParams.greedy(5, logprobs=True)))
    logits = ort.logits(ort.tokenize("Once upon a time"))[-1].astype(np.float64)
    expect = logits[toks[0].id] - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    assert toks[0].logprob == pytest.approx(expect, abs=1e-3) and all(t.logprob <= 0 for t in toks)
    gen = ort.stream("Once upon a time", SamplingParams.greedy(50), stats := StreamStats())
    next(gen), next(gen)
    gen.close()  # a client that goes away: the generator is released, the engine serves the next call
    assert stats.completion_tokens == 2
    assert ort.complete("Once upon a time", SamplingParams.greedy(30)).text == full


def test_seeds_repeat_and_differ(ort) -> None:  # noqa: ANN001
    p = SamplingParams(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    a, b = ort.complete("Once", p).text, ort.complete("Once", p).text
    others = {ort.complete("Once", SamplingParams(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0,
                                                   min_p=0.0, seed=s)).text for s in range(8, 12)}
    assert a == b and len(others | {a}) > 1


def test_chat_grammar_and_context_limits(ort) -> None:  # noqa: ANN001
    prompt, stops = ort.chat_prompt([{"role": "user", "content": "hi"}])
    assert "hi" in prompt
    with pytest.raises(InvalidRequestError, match="GBNF"):
        list(ort.stream("x", SamplingParams(grammar='root ::= "a"')))
    with pytest.raises(ContextOverflowError):
        list(ort.stream([1] * 300, SamplingParams.greedy(4)))


def test_export_keeps_tokenizer_files_and_checks_eos(stories_onnx: Path, stories_dir: Path) -> None:
    rec = json.loads((stories_onnx / "edgegen_export.json").read_text())
    for name in rec["tokenizer_files"]:
        assert (stories_onnx / name).read_bytes() == (stories_dir / name).read_bytes()
    assert "tokenizer.json" in rec["tokenizer_files"]
    cfg = json.loads((stories_onnx / "genai_config.json").read_text())["model"]
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    assert set(rec["source_eos_ids"]) <= set(eos) and rec["eos_ids"] == eos


def test_int4_export_of_a_random_llama(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgegen.export.onnx_genai import Precision, export_onnx
    from edgegen.plan.facts import model_facts

    src = tmp_path / "hf"
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=[2, 5], bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):  # a 512-token tokenizer
        (src / name).write_bytes((Path(__file__).parents[1] / "fixtures" / "stories260K" / name).read_bytes())
    out = export_onnx(src, tmp_path / "onnx", Precision.INT4)
    assert out.source_eos_ids == [2, 5] and {2, 5} <= set(out.eos_ids)
    facts = model_facts(out.out)
    assert facts.weights_read.get("INT4", 0) >= 2 * (3 * 64 * 128 + 2 * 64 * 64 + 2 * 64 * 32)  # every block matmul
    with open_engine(out.out, n_ctx=64, n_threads=1) as e:
        assert e.complete([1, 10, 20], SamplingParams.greedy(5, ignore_eos=True)).completion_tokens == 5
    with pytest.raises(Exception, match="already exists"):
        export_onnx(src, out.out, Precision.INT4)
