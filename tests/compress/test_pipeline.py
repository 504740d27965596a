"""End to end on the real tiny model (stories260K), plus every bad input the CLI can be given.

Golden test: stories260K compressed to its smallest mix still runs under llama.cpp and stays close
to the F32 model on the same text (mean KL and top-1 agreement over the conftest story; greedy text
equal for its first tokens). The tolerances are set from what its format mix can do: its matrices go
to 4-5 bit blocks (the 172-wide FFN down projection stays F16), and our own measurements put the KL
near 0.01 nats; 0.05 and 85% top-1 leave room for thread-count noise while still failing on a broken
layout, wrong scales or a mis-ordered tensor (those give KL > 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgegen.compress.pipeline import Budget, CompressConfig, compress
from edgegen.errors import BudgetError, InvalidModelError, InvalidTextError, UserInputError
from edgegen.runtime.engine import Engine, SamplingParams
from tests.conftest import STORIES_TEXT

FAST = CompressConfig(seq_len=64, calib_seqs=3, fisher_seqs=1, sample_rows=64)
CALIB = STORIES_TEXT * 6


def _kl_top1(model: Path, ref: Path, text: str) -> tuple[float, float]:
    with Engine(ref, n_ctx=128, logits_all=True) as r, Engine(model, n_ctx=128, logits_all=True) as m:
        ids = r.tokenize(text)[:128]
        a, b = r.logits(ids).astype(np.float64), m.logits(ids).astype(np.float64)
    la = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    lb = b - np.logaddexp.reduce(b, axis=1, keepdims=True)
    kl = (np.exp(la) * (la - lb)).sum(axis=1)
    return float(kl.mean()), float((a.argmax(1) == b.argmax(1)).mean())


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, stories_dir):
    out = tmp_path_factory.mktemp("c") / "stories-small.gguf"
    report = compress(stories_dir, out, budget=Budget.of(preset="smallest"), calib_text=CALIB, config=FAST)
    return out, report


def test_compressed_stories_runs_and_stays_close(compressed, stories_gguf):
    out, report = compressed
    kl, top1 = _kl_top1(out, stories_gguf, STORIES_TEXT)
    assert kl < 0.05 and top1 > 0.85
    greedy = SamplingParams.greedy(12)
    with Engine(stories_gguf, n_ctx=128) as ref, Engine(out, n_ctx=128) as ours:
        want = ref.complete("Once upon a time", greedy).text
        got = ours.complete("Once upon a time", greedy).text
    assert got.split()[:6] == want.split()[:6]


def test_report_matches_the_file(compressed):
    out, report = compressed
    d = report.to_dict()
    json.dumps(d)  # serialisable
    assert d["file_bytes"] == out.stat().st_size
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert {t["name"]: t["type"] for t in d["tensors"]} == types
    assert types["blk.0.ffn_down.weight"] in ("F16", "F32")  # 172 wide: no block format holds it
    assert any(v not in ("F16", "F32") for v in types.values())
    for t in d["tensors"]:
        assert t["bytes"] == next(x.n_bytes for x in reader.tensors if x.name == t["name"])
    assert d["calibrated"] and d["predicted_kl"] > 0


def test_size_budget_is_met(tmp_path, stories_gguf):
    budget = 0.30  # MiB; the F32 file is ~1.1 MiB, the smallest mix ~0.23 MiB
    out = tmp_path / "s.gguf"
    report = compress(stories_gguf, out, budget=Budget.of(max_size_mib=budget), calib_text=CALIB, config=FAST)
    assert out.stat().st_size <= budget * 2**20
    assert report.file_bytes == out.stat().st_size


def _nothing_left(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{out.name}")]


def test_budget_below_smallest_fails_before_work(tmp_path, stories_gguf):
    out = tmp_path / "x.gguf"
    with pytest.raises(BudgetError, match="smallest this model can be made"):
        compress(stories_gguf, out, budget=Budget.of(max_size_mib=0.05), calib_text=CALIB, config=FAST)
    with pytest.raises(BudgetError, match="bits per weight"):
        compress(stories_gguf, out, budget=Budget.of(bpw=2.0), calib_text=CALIB, config=FAST)
    _nothing_left(tmp_path, out)


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_calibration_text_is_refused(tmp_path, stories_gguf, text):
    out = tmp_path / "x.gguf"
    with pytest.raises(InvalidTextError, match="empty"):
        compress(stories_gguf, out, calib_text=text, config=FAST)
    f = tmp_path / "calib.txt"
    f.write_text(text)
    with pytest.raises(InvalidTextError, match="empty"):
        compress(stories_gguf, out, calib=f, config=FAST)
    _nothing_left(tmp_path, out)


def test_too_short_calibration_text_is_refused(tmp_path, stories_gguf):
    out = tmp_path / "x.gguf"
    with pytest.raises(InvalidTextError, match="tokens"):
        compress(stories_gguf, out, budget=Budget.of(preset="smallest"), calib_text="Once upon a time.",
                 config=FAST)
    _nothing_left(tmp_path, out)


def test_model_without_quantizable_tensors_is_refused(tmp_path):
    src = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_tensor("token_embd.weight", np.ones((10, 20), np.float32))  # 20 wide: no block format
    w.add_tensor("output_norm.weight", np.ones(20, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "x.gguf"
    with pytest.raises(InvalidModelError, match="no weight matrix"):
        compress(src, out, calib_text=CALIB, config=FAST)
    _nothing_left(tmp_path, out)


def test_conflicting_or_unknown_budget_flags():
    with pytest.raises(UserInputError, match="only one"):
        Budget.of(max_size_mib=10, bpw=4)
    with pytest.raises(UserInputError, match="unknown preset"):
        Budget.of(preset="q1")
    with pytest.raises(BudgetError):
        Budget.of(max_size_mib=-1)


def test_cli_reports_bad_budget_with_exit_code_2(tmp_path, stories_gguf, capsys):
    from edgegen.cli import main

    out = tmp_path / "x.gguf"
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(stories_gguf), "-o", str(out), "--max-size-mib", "0.01", "--no-calib"])
    assert exc.value.code == 2
    assert "smallest this model can be made" in capsys.readouterr().err
    _nothing_left(tmp_path, out)


def test_cli_compresses_and_writes_report(tmp_path, stories_gguf):
    from edgegen.cli import main

    out, rep = tmp_path / "o.gguf", tmp_path / "r.json"
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB)
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(stories_gguf), "-o", str(out), "--preset", "smallest", "--calib", str(calib),
              "--report", str(rep)])
    assert exc.value.code == 0
    data = json.loads(rep.read_text())
    assert data["file_bytes"] == out.stat().st_size and data["calibrated"]


def test_speed_limit_from_a_reference_file_is_met(tmp_path, compressed, stories_gguf):
    from edgegen.compress.speed import file_decode_cost

    ref, _ = compressed  # the smallest mix: fast formats
    free = compress(stories_gguf, tmp_path / "free.gguf", budget=Budget.of(max_size_mib=0.6),
                    calib_text=CALIB, config=FAST)
    limited = compress(stories_gguf, tmp_path / "lim.gguf", budget=Budget.of(max_size_mib=0.6, speed_of=ref),
                       calib_text=CALIB, config=FAST)
    limit = file_decode_cost(ref)
    assert free.predicted_decode_ms > limit  # the size budget alone buys slower formats here
    assert limited.predicted_decode_ms <= limit * (1 + 1e-6)
    assert file_decode_cost(tmp_path / "lim.gguf") == pytest.approx(limited.predicted_decode_ms, rel=1e-3)
    assert limited.predicted_kl >= free.predicted_kl


def test_speed_profile_sets_the_limit_in_its_own_units(tmp_path, compressed, stories_gguf, capsys):
    from edgegen.cli import main
    from edgegen.compress.speed import file_decode_cost, load_profile

    ref, _ = compressed
    profile = tmp_path / "cpu.json"
    profile.write_text(json.dumps({"Q4_0": 0.5, "Q8_0": 0.05}))  # a CPU where Q8_0 is ten times faster
    budget = Budget.of(max_size_mib=0.6, speed_of=ref, speed_profile=profile)
    assert budget.max_decode_ms == pytest.approx(file_decode_cost(ref, load_profile(profile)))
    report = compress(stories_gguf, tmp_path / "p.gguf", budget=budget, calib_text=CALIB, config=FAST)
    assert report.predicted_decode_ms <= budget.max_decode_ms * (1 + 1e-6)
    assert report.predicted_decode_ms == pytest.approx(file_decode_cost(tmp_path / "p.gguf", budget.speed_costs))

    profile.write_text("{}")
    out = tmp_path / "bad.gguf"
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(stories_gguf), "-o", str(out), "--speed-of", str(ref), "--speed-profile", str(profile)])
    assert exc.value.code == 2 and "speed profile" in capsys.readouterr().err
    assert not out.exists()


def test_prefill_limit_from_a_reference_file_is_met(tmp_path, compressed, stories_gguf):
    from edgegen.compress.speed import file_decode_cost, file_prefill_cost

    ref, _ = compressed
    budget = Budget.of(max_size_mib=0.6, speed_of=ref)
    assert budget.max_prefill_ms == pytest.approx(file_prefill_cost(ref))
    report = compress(stories_gguf, tmp_path / "p.gguf", budget=budget, calib_text=CALIB, config=FAST)
    assert report.predicted_decode_ms <= budget.max_decode_ms * (1 + 1e-6)
    assert report.predicted_prefill_ms <= budget.max_prefill_ms * (1 + 1e-6)
    assert file_prefill_cost(tmp_path / "p.gguf") == pytest.approx(report.predicted_prefill_ms, rel=1e-3)
    assert file_decode_cost(tmp_path / "p.gguf") == pytest.approx(report.predicted_decode_ms, rel=1e-3)


def test_a_prefill_only_limit_changes_the_mix(tmp_path, stories_gguf):
    # a CPU on which Q8_0 prefills ten times cheaper than any 4-bit format: a tight prefill limit
    # must buy Q8_0 where the size budget alone would not
    costs = {k: 1.0 for k in ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}
    costs.update({"Q8_0": 0.1, "F16": 2.0, "F32": 4.0})
    free = compress(stories_gguf, tmp_path / "free.gguf", budget=Budget(max_bytes=int(0.6 * 2**20)),
                    calib_text=CALIB, config=FAST)
    from edgegen.compress.speed import prefill_cost

    def cost(rep):
        return prefill_cost([(t.name, tuple(t.shape), t.type) for t in rep.tensors], costs)

    limit = 0.8 * cost(free)
    limited = compress(stories_gguf, tmp_path / "lim.gguf", calib_text=CALIB, config=FAST,
                       budget=Budget(max_bytes=int(0.6 * 2**20), max_prefill_ms=limit, prefill_costs=costs))
    assert cost(limited) <= limit * (1 + 1e-6) < cost(free)
    assert limited.types.get("Q8_0", 0) > free.types.get("Q8_0", 0)
