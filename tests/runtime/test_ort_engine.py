"""The ONNX Runtime GenAI engine against the llama.cpp one: the same interface, the same answers.

A random 2-layer Llama (``tiny_llama_hf``) is exported to fp32 ONNX by ``edgegen export onnx`` and
converted to F32 GGUF by our converter: the two engines then run identical weights, so their
tokenizations, logits and greedy continuations must agree. int4 export and the EOS check run on
another random Llama; stories260K (head size 8) must be refused before any work.
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
    OutputError,
    UnsupportedArchitectureError,
    UserInputError,
)
from edgegen.runtime.base import EngineKind, ModelFormat, TextEngine, detect_format, open_engine, resolve_engine
from edgegen.runtime.engine import SamplingParams, StreamStats
from tests.conftest import STORIES_DIR, STORIES_TEXT

pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def ort(tiny_onnx: Path):  # noqa: ANN201
    with open_engine(tiny_onnx, n_ctx=128, n_threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def cpp(tiny_gguf: Path):  # noqa: ANN201
    with open_engine(tiny_gguf, n_ctx=128, n_threads=1, logits_all=True) as engine:
        yield engine


def test_factory_picks_the_engine_from_the_artifact(tiny_onnx: Path, tiny_gguf: Path, ort, cpp) -> None:  # noqa: ANN001
    assert detect_format(tiny_onnx) is ModelFormat.ONNX and detect_format(tiny_gguf) is ModelFormat.GGUF
    assert resolve_engine(tiny_onnx)[1] is EngineKind.ORT
    assert resolve_engine(tiny_onnx / "model.onnx")[0] == tiny_onnx
    assert resolve_engine(tiny_gguf, "auto")[1] is EngineKind.LLAMACPP
    assert type(ort).__name__ == "OrtEngine" and isinstance(ort, TextEngine) and isinstance(cpp, TextEngine)
    with pytest.raises(UserInputError, match="cannot run"):
        resolve_engine(tiny_gguf, "ort")
    with pytest.raises(UserInputError, match="unknown engine"):
        resolve_engine(tiny_gguf, "tensorrt")


def test_onnx_folder_without_genai_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(InvalidModelError, match="genai_config.json"):
        open_engine(tmp_path)


def test_missing_engine_package_is_one_clear_error(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if the package were not installed
    with pytest.raises(EngineNotInstalledError, match=r"edgegen\[onnx\]"):
        open_engine(tiny_onnx)


def test_same_weights_same_tokens_logits_and_greedy_text(ort, cpp) -> None:  # noqa: ANN001
    ids = cpp.tokenize(STORIES_TEXT)[:48]
    assert ort.tokenize(STORIES_TEXT)[:48] == ids  # the source's tokenizer.json gives llama.cpp's ids
    assert ort.detokenize(ids[1:]) == cpp.detokenize(ids[1:])
    a, b = ort.logits(ids), cpp.logits(ids)
    assert a.shape == b.shape == (48, 512)
    assert np.max(np.abs(a - b)) < 1e-2 * max(1.0, float(np.abs(b).max()))  # fp32 both: summation order only
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
    greedy = SamplingParams.greedy(24, ignore_eos=True)
    x, y = list(ort.stream(PROMPT, greedy)), list(cpp.stream(PROMPT, greedy))
    assert [t.id for t in x][:16] == [t.id for t in y][:16]
    assert "".join(t.text for t in x[:16]) == "".join(t.text for t in y[:16])  # same bytes, same UTF-8 repair


def test_both_engines_detokenize_as_hf_decode_skipping_special_tokens(ort, cpp, tiny_onnx: Path) -> None:  # noqa: ANN001
    """Both engines' ``detokenize`` is HF ``tokenizers``' ``decode(ids, skip_special_tokens=True)`` on the
    source's tokenizer.json, with and without BOS, with EOS after or before the text (SentencePiece's
    prefix space goes, a space the text starts with stays); an id outside the vocabulary is refused."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(tiny_onnx / "tokenizer.json"))
    for text in (STORIES_TEXT[:200], " leading space", "  two", "a </s> b", "Lily said. Tom!"):
        for add_bos in (True, False):
            ids = cpp.tokenize(text, add_bos=add_bos)
            for seq in (ids, ids + [cpp.eos_id], [cpp.eos_id, *ids]):
                want = hf.decode(seq, skip_special_tokens=True)
                assert (cpp.detokenize(seq), ort.detokenize(seq)) == (want, want), (text, add_bos, seq[:4])
    for engine in (ort, cpp):
        assert engine.detokenize([]) == ""
        with pytest.raises(UserInputError, match="outside the vocabulary"):
            engine.detokenize([1, engine.n_vocab])


def test_special_false_tokenizes_special_token_text_as_text(ort, cpp) -> None:  # noqa: ANN001
    """llama.cpp's parse_special=False (what eval and user text use): "</s>" written in text is the
    characters, not the end-of-sequence id; ONNX Runtime GenAI's tokenizer always parses it."""
    for text in ("Lily said </s> and <s> then", "x</s>", "Once upon a time"):
        for add_bos in (True, False):
            plain = ort.tokenize(text, add_bos=add_bos, special=False)
            assert plain == cpp.tokenize(text, add_bos=add_bos, special=False), text
            assert ort.tokenize(text, add_bos=add_bos) == cpp.tokenize(text, add_bos=add_bos), text
    plain = ort.tokenize("a </s> b", special=False)
    assert ort.eos_id not in plain and ort.eos_id in ort.tokenize("a </s> b", special=True)
    assert ort.detokenize(plain[1:]).strip() == "a </s> b"


def test_stream_stops_logprobs_and_cancellation(ort) -> None:  # noqa: ANN001
    full = ort.complete(PROMPT, SamplingParams.greedy(30, ignore_eos=True)).text
    stop = full[10:14]
    stats = StreamStats()
    text = "".join(t.text for t in ort.stream(PROMPT, SamplingParams.greedy(30, stop=(stop,), ignore_eos=True), stats))
    assert text == full[: full.index(stop)] and stats.finish_reason == "stop"
    # log-probabilities are read from the distribution each token was drawn from
    toks = list(ort.stream(PROMPT, SamplingParams.greedy(5, logprobs=True, ignore_eos=True)))
    row = ort.logits(ort.tokenize(PROMPT))[-1].astype(np.float64)
    expect = row[toks[0].id] - row.max() - np.log(np.exp(row - row.max()).sum())
    assert toks[0].logprob == pytest.approx(expect, abs=1e-3) and all(t.logprob <= 0 for t in toks)
    assert toks[0].id == int(row.argmax())
    gen = ort.stream(PROMPT, SamplingParams.greedy(50, ignore_eos=True), stats := StreamStats())
    next(gen), next(gen)
    gen.close()  # a client that went away: the generator is released, the engine serves the next call
    assert stats.completion_tokens == 2
    assert ort.complete(PROMPT, SamplingParams.greedy(30, ignore_eos=True)).text == full


def test_seeds_repeat_and_differ(ort) -> None:  # noqa: ANN001
    def p(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed,
                              ignore_eos=True)

    a, b = ort.complete(PROMPT, p(7)).text, ort.complete(PROMPT, p(7)).text
    others = {ort.complete(PROMPT, p(s)).text for s in range(8, 12)}
    assert a == b and len(others | {a}) > 1


def test_chat_grammar_and_context_limits(ort) -> None:  # noqa: ANN001
    prompt, _ = ort.chat_prompt([{"role": "user", "content": "hi"}])
    assert "user: hi" in prompt  # no template in this tokenizer: the plain transcript, as llama.cpp's engine
    with pytest.raises(InvalidRequestError, match="GBNF"):
        list(ort.stream("x", SamplingParams(grammar='root ::= "a"')))
    with pytest.raises(ContextOverflowError):
        list(ort.stream([1] * 200, SamplingParams.greedy(4)))


def test_export_keeps_tokenizer_files_and_checks_eos(tiny_onnx: Path, tiny_llama_hf: Path) -> None:
    rec = json.loads((tiny_onnx / "edgegen_export.json").read_text())
    assert set(rec["tokenizer_files"]) == {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}
    for name in rec["tokenizer_files"]:
        assert (tiny_onnx / name).read_bytes() == (tiny_llama_hf / name).read_bytes()
    cfg = json.loads((tiny_onnx / "genai_config.json").read_text())["model"]
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    assert rec["source_eos_ids"] == [2] and 2 in eos and rec["eos_ids"] == eos


def test_int4_export_restores_source_eos_ids(tmp_path: Path, tiny_llama_hf: Path) -> None:
    import shutil

    from edgegen.export.onnx_genai import Precision, export_onnx
    from edgegen.plan.facts import model_facts

    src = tmp_path / "hf"
    shutil.copytree(tiny_llama_hf, src)
    gen = src / "generation_config.json"  # a chat model that also ends turns with token 5
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "eos_token_id": [2, 5]}))
    out = export_onnx(src, tmp_path / "onnx", Precision.INT4)
    assert out.source_eos_ids == [2, 5] and {2, 5} <= set(out.eos_ids)
    cfg = json.loads((out.out / "genai_config.json").read_text())["model"]
    assert {2, 5} <= set(cfg["eos_token_id"])
    facts = model_facts(out.out)
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert facts.weights_read.get("INT4", 0) >= 2 * per_layer  # every block matmul is MatMulNBits
    with open_engine(out.out, n_ctx=64, n_threads=1) as e:
        assert e.complete([1, 10, 20], SamplingParams.greedy(5, ignore_eos=True)).completion_tokens == 5
    with pytest.raises(OutputError, match="already exists"):
        export_onnx(src, out.out, Precision.INT4)


def test_head_size_ort_cannot_run_is_refused_before_work(tmp_path: Path) -> None:
    from edgegen.export.onnx_genai import Precision, export_onnx

    with pytest.raises(UnsupportedArchitectureError, match="multiple of 16"):
        export_onnx(STORIES_DIR, tmp_path / "o", Precision.FP32)
    assert not (tmp_path / "o").exists()


def test_agent_health_check_accepts_an_onnx_model(tiny_onnx: Path, tmp_path: Path) -> None:
    from edgegen.agent.health import HealthCheckError, HealthPolicy, check_health

    report = check_health(tiny_onnx, HealthPolicy(n_tokens=4, n_ctx=64))
    assert report.tokens >= 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genai_config.json").write_text((tiny_onnx / "genai_config.json").read_text())
    with pytest.raises(HealthCheckError, match="does not load"):
        check_health(broken, HealthPolicy(n_tokens=4, n_ctx=64))
