"""``edgegen eval`` on real models under llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen.errors import InvalidTextError
from edgegen.evaluate.quality import evaluate, evaluate_many
from edgegen.hub.texts import EVALUATION_PLAYS, play_files
from edgegen.runtime.llamacpp_quant import llamacpp_quantize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eval_text(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text") / "eval.txt"
    out.write_text(play_files(shakespeare, EVALUATION_PLAYS[:1])[0].read_text(errors="replace"))
    return out


def test_model_against_itself_is_perfect(stories_gguf: Path, eval_text: Path) -> None:
    r = evaluate(stories_gguf, stories_gguf, eval_text, chunk_tokens=128, max_chunks=4)
    assert r.kl_mean == 0.0 and r.top1_agreement == 1.0 and r.ppl == r.ppl_ref
    assert r.n_chunks == 4 and r.n_tokens_scored == 4 * 63


def test_quantized_model_differs_measurably(stories_gguf: Path, eval_text: Path, tmp_path: Path) -> None:
    q8 = llamacpp_quantize(stories_gguf, tmp_path / "q8.gguf", "Q8_0")
    q4 = llamacpp_quantize(stories_gguf, tmp_path / "q4.gguf", "Q4_0")
    r8, r4 = evaluate_many([q8, q4], stories_gguf, eval_text, chunk_tokens=128, max_chunks=4)
    assert 0 < r8.kl_mean < r4.kl_mean
    assert r8.top1_agreement >= r4.top1_agreement
    assert r8.file_bytes > r4.file_bytes


def test_too_short_text_is_a_clear_error(stories_gguf: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(InvalidTextError, match="fewer than one chunk"):
        evaluate(stories_gguf, stories_gguf, short, chunk_tokens=128)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InvalidTextError, match="empty"):
        evaluate(stories_gguf, stories_gguf, empty)


@pytest.mark.slow
def test_smollm2_q4_1_against_its_f16_shows_only_kernel_numerics(
    smollm2_q4_1: Path, smollm2_f16: Path, eval_text: Path
) -> None:
    """Same weights, different kernels: the KL is tiny (an independent script measured 0.0036)."""
    r = evaluate(smollm2_q4_1, smollm2_f16, eval_text, max_chunks=4)
    assert 0 < r.kl_mean < 0.02, r.kl_mean
    assert r.top1_agreement > 0.9


@pytest.mark.slow
def test_kl_agrees_with_an_independent_implementation(smollm2_f16: Path, eval_text: Path, tmp_path: Path) -> None:
    q = llamacpp_quantize(smollm2_f16, tmp_path / "q4km.gguf", "Q4_K_M")
    ours = evaluate(q, smollm2_f16, eval_text, max_chunks=3)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kl_independent.py"), str(q), str(smollm2_f16), str(eval_text),
         "--chunks", "3"], capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["n_tokens_scored"] == ours.n_tokens_scored
    assert abs(ours.kl_mean - theirs["kl_mean"]) <= 0.05 * theirs["kl_mean"]
    assert abs(ours.top1_agreement - theirs["top1_agreement"]) < 1e-9
