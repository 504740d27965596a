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
    report = run_demo(tmp_path / "out", model=str(stories_gguf), log=logged.append)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["label"]: r for r in data["variants"]}
    assert set(rows) == {"reference F16", "publisher Q4_1", "llama.cpp Q4_K_M", "edgegen"}
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
    assert [m[:5] for m in logged] == ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]
