"""The main job end to end on the real tiny model: pull (a local path), reference, llama.cpp's Q4_K_M,
edgegen's quantizer under that file's size and decode cost, evaluation, bench, report and chat."""

from __future__ import annotations

import json

import pytest

from edgegen.config import get_settings
from edgegen.report.demo import run_demo


@pytest.fixture
def home(monkeypatch, cache_home):
    monkeypatch.setenv("EDGEGEN_HOME", str(cache_home))  # the Shakespeare texts are cached there
    monkeypatch.setenv("EDGEGEN_ENGINE__N_THREADS", "1")
    get_settings.cache_clear()
    yield cache_home
    get_settings.cache_clear()


def test_demo_compares_edgegen_with_llamacpp_at_no_larger_size(tmp_path, home, stories_gguf):
    logged: list[str] = []
    # the pruned variant has its own test below (a second pass through eval and bench would double this one)
    report = run_demo(tmp_path / "out", model=str(stories_gguf), prune_distill=False, log=logged.append)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["label"]: r for r in data["variants"]}
    assert set(rows) == {"reference F16", "publisher Q4_1", "llama.cpp Q4_K_M", "edgegen"}
    assert data["prune_distill"] is None
    ours, anchor = rows["edgegen"], rows["llama.cpp Q4_K_M"]
    assert ours["file_bytes"] <= anchor["file_bytes"]
    assert 0 <= ours["kl_mean"] < 0.5 and ours["top1_agreement"] > 0.5  # a working model, not noise
    assert ours["decode_tokens_per_s"] > 0 and ours["peak_rss_bytes"] > 0
    compress_report = json.loads((tmp_path / "out" / "models" / "edgegen-compress.json").read_text())
    assert compress_report["file_bytes"] == ours["file_bytes"] and compress_report["calibrated"]
    assert set(data["chat"]["answers"]) == set(rows)
    assert all(len(odds) == 3 for odds in data["chat"]["first_token_top3"].values())
    text = report.read_text()
    assert "| edgegen |" in text and (tmp_path / "out" / "size_quality_speed.png").stat().st_size > 0
    assert [m[:5] for m in logged if m.startswith("[")] == ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]


def test_demo_pruned_variant_is_pruned_distilled_and_no_larger_than_the_anchor(tmp_path, home, stories_gguf):
    from tests.conftest import STORIES_TEXT

    from edgegen.report.demo import _prune_distill, _pruned_note
    from edgegen.runtime.engine import Engine
    from edgegen.runtime.llamacpp_quant import llamacpp_quantize

    anchor = llamacpp_quantize(stories_gguf, tmp_path / "anchor.gguf", "Q8_0")
    calib = tmp_path / "calib.txt"
    calib.write_text(STORIES_TEXT * 40)
    out = tmp_path / "pruned.gguf"
    facts = _prune_distill(stories_gguf, out, anchor, calib, 0.05, lambda _m: None)
    assert facts["block_weights_kept"] <= 0.75 and facts["distill_steps"] >= 1 and facts["distill_minutes"] == 0.05
    assert out.stat().st_size <= anchor.stat().st_size and not (tmp_path / "pruned.stages").exists()
    with Engine(out, n_ctx=64, n_threads=1) as e:
        assert int(e.metadata["llama.feed_forward_length"]) == facts["ffn_width"]
    assert _prune_distill(stories_gguf, out, anchor, calib, 0.05, lambda _m: None) == facts  # reused
    note = _pruned_note(facts)
    assert "only 0.05 minutes" in note and f"{facts['block_weights_kept']:.0%}" in note
