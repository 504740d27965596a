"""``--prune auto``: the budget decides how much to prune (prune.budget), values in, decision out, and
``edgegen compress --prune auto`` follows it on stories260K."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen.errors import PruneTargetError
from edgegen.formats.gguf_file import open_reader
from edgegen.prune import PruneTarget
from edgegen.prune.budget import FLOOR_BPW, MIN_KEEP, WeightCounts, auto_keep, floor_ns_per_weight, weight_counts
from tests.conftest import STORIES_TEXT

# SmolLM2-135M's proportions: 30 blocks of 3.54M matrix weights, a tied 49152 x 576 embedding
SMOL = WeightCounts(block=106_168_320, other=28_311_552, other_read=28_311_552, overhead_bytes=1_600_000,
                    vectors=35_136)


def _bytes_at(counts: WeightCounts, keep: float, bpw: float) -> int:
    return int(counts.overhead_bytes + 4 * counts.vectors + (counts.other + keep * counts.block) * bpw / 8)


def test_a_budget_that_fits_at_the_floor_prunes_nothing() -> None:
    d = auto_keep(SMOL, max_bytes=_bytes_at(SMOL, 1.0, 4.9))  # llama.cpp's Q4_K_M size, about
    assert d.keep == 1.0 and d.bound == "none" and d.size_keep > 1.0


@pytest.mark.parametrize("keep", [0.9, 0.75, 0.6])
def test_a_smaller_budget_prunes_what_does_not_fit_at_the_floor(keep: float) -> None:
    d = auto_keep(SMOL, max_bytes=_bytes_at(SMOL, keep, FLOOR_BPW))
    assert d.bound == "size" and d.keep == pytest.approx(keep, abs=1e-6)
    assert _bytes_at(SMOL, d.keep, FLOOR_BPW) <= _bytes_at(SMOL, keep, FLOOR_BPW) + 1


def test_less_than_half_is_clamped_and_said() -> None:
    d = auto_keep(SMOL, max_bytes=_bytes_at(SMOL, 0.2, FLOOR_BPW))
    assert d.keep == MIN_KEEP and d.clamped and d.size_keep == pytest.approx(0.2, abs=1e-6)


def test_the_tighter_of_size_and_speed_decides() -> None:
    ns = 0.03
    decode_ms = (SMOL.other_read + 0.7 * SMOL.block) * ns * 1e-6  # 0.7 of the blocks at the floor's cost
    d = auto_keep(SMOL, max_bytes=_bytes_at(SMOL, 0.9, FLOOR_BPW), max_decode_ms=decode_ms, ns_floor=ns)
    assert d.bound == "speed" and d.keep == pytest.approx(0.7, abs=1e-6) and d.size_keep == pytest.approx(0.9)
    d = auto_keep(SMOL, max_bytes=_bytes_at(SMOL, 0.6, FLOOR_BPW), max_decode_ms=decode_ms, ns_floor=ns)
    assert d.bound == "size" and d.keep == pytest.approx(0.6, abs=1e-6)


def test_floor_cost_is_the_fastest_format_at_or_above_four_and_a_half_bits() -> None:
    assert floor_ns_per_weight({"Q2_K": 0.01, "Q3_K": 0.02, "Q4_0": 0.05, "Q4_K": 0.04, "Q8_0": 0.06}) == 0.04
    assert floor_ns_per_weight({"Q2_K": 0.01, "Q8_0": 0.06}) == 0.06


def test_no_budget_to_decide_from_is_refused() -> None:
    with pytest.raises(PruneTargetError, match="needs a budget"):
        auto_keep(SMOL)
    with pytest.raises(PruneTargetError, match="decided by a budget"):
        PruneTarget.parse("auto").resolve(None)  # type: ignore[arg-type]
    assert PruneTarget.parse("auto,per_layer") == PruneTarget(auto=True, per_layer=True)


def test_compress_prune_auto_on_stories260k(stories_gguf: Path, tmp_path: Path) -> None:
    counts = weight_counts(open_reader(stories_gguf))
    assert counts.block > 0 and counts.other > 0
    budget = _bytes_at(counts, 0.7, FLOOR_BPW) / 2**20
    text = tmp_path / "t.txt"
    text.write_text(STORIES_TEXT * 40)
    out = tmp_path / "auto.gguf"
    p = subprocess.run([sys.executable, "-m", "edgegen", "compress", str(stories_gguf), "-o", str(out),
                        "--prune", "auto", "--max-size-mib", f"{budget:.6f}", "--calib", str(text),
                        "--report", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    auto = rep["prune"]["auto"]
    assert rep["stages"] == ["prune", "quantize"] and auto["bound"] == "size"
    assert auto["keep"] == pytest.approx(0.7, abs=0.01)
    assert rep["prune"]["plan"]["block_weights_kept"] <= auto["keep"]
    assert out.stat().st_size <= budget * 2**20


def test_decide_auto_reads_the_budget_flags(stories_gguf: Path) -> None:
    from edgegen.compress.pipeline import Budget
    from edgegen.compress.staged import decide_auto

    assert decide_auto(stories_gguf, Budget.of(bpw=9)).keep == 1.0  # fits at >= 4.5 bpw: no pruning
    counts = weight_counts(open_reader(stories_gguf))
    tight = decide_auto(stories_gguf, Budget.of(max_size_mib=_bytes_at(counts, 0.8, FLOOR_BPW) / 2**20))
    assert tight.bound == "size" and tight.keep == pytest.approx(0.8, abs=0.01)
    with pytest.raises(PruneTargetError, match="needs a budget"):
        decide_auto(stories_gguf, Budget.of(preset="smallest"))
