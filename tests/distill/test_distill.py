"""Distillation recovers a pruned student, survives kill -9 and refuses bad input with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgegen.distill import DistillConfig, distill, kd_loss
from edgegen.distill.teacher import top_logprobs
from edgegen.distill.trainer import learning_rate
from edgegen.errors import BudgetError, TokenizerMismatchError, UserInputError
from edgegen.evaluate.quality import evaluate_many
from edgegen.prune import PruneTarget, prune
from edgegen.runtime.engine import Engine, SamplingParams

EDGEGEN = [sys.executable, "-m", "edgegen"]


@pytest.fixture(scope="module")
def story_text(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stories sampled from stories260K itself (the only text in its domain here), ~3,000 tokens."""
    with Engine(stories_gguf, n_ctx=256, n_threads=1) as e:
        parts = [e.complete("Once upon a time", SamplingParams(max_tokens=200, temperature=1.0, seed=s)).text
                 for s in range(16)]
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_text("\n\n".join("Once upon a time" + p for p in parts))
    return path


@pytest.fixture(scope="module")
def student(stories_gguf: Path, story_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("student") / "pruned.gguf"
    prune(stories_gguf, out, PruneTarget.parse("layers=3,ffn=96,kv=2"), calib_text=story_text.read_text(),
          seq_len=64, seqs=4)
    return out


def test_kd_loss_is_zero_only_at_the_teacher() -> None:
    torch.manual_seed(0)
    t = torch.randn(5, 50)
    lp = torch.log_softmax(t, -1)
    ids = torch.arange(50).expand(5, 50)
    assert float(kd_loss(t, lp, ids)) == pytest.approx(0.0, abs=1e-5)
    assert float(kd_loss(t + torch.randn(5, 50), lp, ids)) > 0.01
    top = lp.topk(8, -1)
    assert float(kd_loss(t, top.values, top.indices, temperature=2.0)) > 0.0  # tail mass elsewhere


def test_teacher_top_k_are_the_largest_log_probabilities() -> None:
    logits = np.random.default_rng(0).normal(0, 3, (7, 500)).astype(np.float32)
    vals, ids = top_logprobs(logits, 16)
    full = logits - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))  # log-softmax, [7, 500]
    expect = np.argsort(-full, axis=1)[:, :16]
    assert vals.shape == ids.shape == (7, 16)
    assert np.array_equal(ids, expect)
    np.testing.assert_allclose(vals, np.take_along_axis(full, expect, 1), atol=1e-5)


def test_learning_rate_warms_up_then_decays_to_zero_by_the_budget() -> None:
    cfg = DistillConfig(budget_minutes=10, lr=1e-3, warmup_steps=4)
    assert [learning_rate(cfg, s, 0.0) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert learning_rate(cfg, 100, 150.0) == pytest.approx(7.5e-4)  # a quarter of the 600 s spent
    assert learning_rate(cfg, 100, 600.0) == 0.0 and learning_rate(cfg, 100, 900.0) == 0.0
    steps = DistillConfig(budget_minutes=10, lr=1e-3, warmup_steps=1, max_steps=40)
    assert learning_rate(steps, 30, 60.0) == pytest.approx(2.5e-4)  # steps run out before minutes
    flat = DistillConfig(budget_minutes=10, lr=1e-3, warmup_steps=1, schedule="constant")
    assert learning_rate(flat, 100, 599.0) == 1e-3
    with pytest.raises(UserInputError, match="schedule"):
        DistillConfig(budget_minutes=1, schedule="cosine-ish")


def test_distillation_lowers_kl_on_stories260k(stories_gguf: Path, student: Path, story_text: Path,
                                                tmp_path: Path) -> None:
    cfg = DistillConfig(budget_minutes=5, seq_len=64, lr=3e-3, max_steps=40, warmup_steps=2, top_k=32)
    report = distill(student, stories_gguf, tmp_path / "distilled.gguf", text=story_text.read_text(),
                     config=cfg, workdir=tmp_path / "work")
    assert report.steps == 40 and report.teacher_entries_computed > 0
    before, after = evaluate_many([student, tmp_path / "distilled.gguf"], stories_gguf, story_text, chunk_tokens=64,
                             n_threads=1)
    assert after.kl_mean < 0.7 * before.kl_mean, (before.kl_mean, after.kl_mean)


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*EDGEGEN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume_from_the_last_checkpoint(stories_gguf: Path, student: Path, story_text: Path,
                                                     tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out.gguf"
    args = [str(student), "--teacher", str(stories_gguf), "-o", str(out), "--text", str(story_text),
            "--work-dir", str(work), "--budget-minutes", "10", "--seq-len", "64", "--lr", "1e-3",
            "--checkpoint-minutes", "0"]
    proc = _run("distill", *args)
    ckpt = work / "checkpoint.pt"
    deadline = time.monotonic() + 180  # a generous bound for a loaded machine; normally ~10 s
    step = 0
    while time.monotonic() < deadline and step < 5:
        time.sleep(0.2)
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=False)["step"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert step >= 5, proc.stderr.read() if proc.stderr else ""
    assert not out.exists()
    killed_at = torch.load(ckpt, weights_only=False)["step"]  # a whole checkpoint, not a torn one
    assert killed_at >= step
    cached = len(list((work / "teacher").glob("seq-*.npz")))
    done = subprocess.run([*EDGEGEN, "distill", *args, "--max-steps", str(killed_at + 3), "--report",
                           str(tmp_path / "r.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["resumed_from_step"] == killed_at and rep["steps"] == killed_at + 3
    assert rep["teacher_entries_computed"] <= 4 and cached > 0  # the cached teacher was reused
    with Engine(out, n_ctx=64, n_threads=1, logits_all=True) as e:
        assert np.isfinite(e.logits([1, 5, 9])).all()


def _other_tokenizer(src: Path, out: Path) -> Path:
    import gguf

    from edgegen.formats.dequant import metadata_copier, plan_tensors
    from edgegen.formats.gguf_file import open_reader
    from edgegen.formats.gguf_write import write_gguf

    reader = open_reader(src)
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    tokens[300] = "<changed>"
    copy = metadata_copier(reader, int(gguf.LlamaFileType.ALL_F32), skip=frozenset({"tokenizer.ggml.tokens"}))

    def meta(w) -> None:  # noqa: ANN001
        copy(w)
        w.add_token_list(tokens)

    return write_gguf(out, "llama", meta, plan_tensors(reader, "f32"))


def test_teacher_with_another_tokenizer_is_refused(stories_gguf: Path, student: Path, tmp_path: Path) -> None:
    other = _other_tokenizer(stories_gguf, tmp_path / "other.gguf")
    with pytest.raises(TokenizerMismatchError):
        distill(student, other, tmp_path / "o.gguf", text="x", config=DistillConfig(budget_minutes=1),
                workdir=tmp_path / "w")
    p = subprocess.run([*EDGEGEN, "distill", str(student), "--teacher", str(other), "-o", str(tmp_path / "o.gguf"),
                        "--budget-minutes", "1", "--text", str(other)], capture_output=True, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "different tokenizer" in lines[0], p.stderr


def test_zero_budget_is_refused(stories_gguf: Path, student: Path, tmp_path: Path) -> None:
    with pytest.raises(BudgetError):
        distill(student, stories_gguf, tmp_path / "o.gguf", text="x", config=DistillConfig(budget_minutes=0),
                workdir=tmp_path / "w")
    p = subprocess.run([*EDGEGEN, "distill", str(student), "--teacher", str(stories_gguf),
                        "-o", str(tmp_path / "o.gguf"), "--budget-minutes", "0"], capture_output=True, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "0 minutes" in lines[0], p.stderr


def test_compress_prune_distill_quantize_in_one_command(stories_gguf: Path, story_text: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "small.gguf"
    p = subprocess.run([*EDGEGEN, "compress", str(stories_gguf), "-o", str(out), "--prune", "layers=4,ffn=128",
                        "--distill-minutes", "0.05", "--calib", str(story_text), "--preset", "q8",
                        "--report", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["stages"] == ["prune", "distill", "quantize"] and rep["distill"]["steps"] >= 1
    with Engine(out, n_ctx=64, n_threads=1, logits_all=True) as e:
        assert e.metadata["llama.block_count"] == "4" and e.metadata["llama.feed_forward_length"] == "128"
        assert np.isfinite(e.logits([1, 5, 9])).all()
