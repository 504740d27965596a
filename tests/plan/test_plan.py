"""The planner: profile validation, predictions from model facts, the choice, refusals, energy labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgegen.errors import InvalidProfileError, PlanRefusedError
from edgegen.plan import Constraints, Workload, builtin_profiles, choose, load_profile, model_facts, plan, predict
from edgegen.plan.energy import EnergyCounter, estimate_j
from edgegen.plan.facts import ModelFacts
from edgegen.plan.profile import profile_from_dict
from edgegen.runtime.base import EngineKind, ModelFormat

PROFILE = {
    "name": "test-board", "source": "test", "ram_bytes": 512 * 2**20, "cores": 4, "threads": 1,
    "read_bandwidth_bytes_per_s": 1e10,
    "engines": {
        "llamacpp": {"decode_ns_per_weight": {"Q4_0": 0.1, "F16": 0.2}, "token_overhead_ms": 1.0,
                     "attn_ns_per_kv_elem": 0.01, "prefill_ns_per_weight": 0.01, "base_rss_bytes": 50 * 2**20,
                     "kv_bytes_per_elem": 2, "weight_residency": 1.0},
        "ort": {"decode_ns_per_weight": {"INT4": 0.05}, "token_overhead_ms": 0.5, "attn_ns_per_kv_elem": 0.01,
                "prefill_ns_per_weight": 0.01, "base_rss_bytes": 80 * 2**20, "kv_bytes_per_elem": 4,
                "weight_residency": 1.0},
    },
    "power": {"active_w": 5.0, "idle_w": 1.0, "source": "published: test sheet"},
}


def facts(path: str, types: dict[str, int], nbytes: int, engine: EngineKind = EngineKind.LLAMACPP) -> ModelFacts:
    fmt = ModelFormat.GGUF if engine is EngineKind.LLAMACPP else ModelFormat.ONNX
    return ModelFacts(path, fmt, engine, nbytes, types, n_layers=10, n_kv_heads=2, head_dim=64, n_vocab=1000,
                      n_ctx_train=4096, n_params=sum(types.values()))


def test_prediction_is_the_documented_arithmetic() -> None:
    prof = profile_from_dict(PROFILE)
    f = facts("m.gguf", {"Q4_0": 100_000_000}, 60 * 2**20)
    w = Workload(n_ctx=1024, n_prompt=100, n_gen=50)
    p = predict(f, prof, w)
    kv_elems = 2 * 10 * 2 * 64
    ms = 100e6 * 0.1e-6 + 1.0 + 0.01 * kv_elems * 125 * 1e-6
    assert p.decode_tok_s == pytest.approx(1e3 / ms)
    assert p.ram_parts == {"weights": 60 * 2**20, "kv_cache": kv_elems * 1024 * 2, "logits": 0, "runtime": 50 * 2**20}
    assert p.j_per_token == pytest.approx(5.0 * ms / 1e3) and p.energy_source.startswith("estimated")
    # ONNX Runtime GenAI's cache grows with the sequence; llama.cpp's is allocated for the whole context
    o = predict(facts("m-onnx", {"INT4": 100_000_000}, 70 * 2**20, EngineKind.ORT), prof, w)
    assert o.ram_parts["kv_cache"] == kv_elems * 150 * 4 and o.ram_parts["logits"] == 100 * 1000 * 4


def test_unnamed_types_are_scaled_from_relative_costs() -> None:
    prof = profile_from_dict(PROFILE)
    q8 = prof.engines[EngineKind.LLAMACPP].ns_per_weight("Q8_0")
    costs = prof.engines[EngineKind.LLAMACPP]
    assert costs.ns_per_weight("Q4_0") < q8 < costs.ns_per_weight("F16") * 2


def test_choice_is_fastest_that_fits_and_refusal_names_what_does_not_fit() -> None:
    prof = profile_from_dict(PROFILE)
    small = facts("small.gguf", {"Q4_0": 100_000_000}, 60 * 2**20)
    big = facts("big.gguf", {"F16": 400_000_000}, 800 * 2**20)
    onnx = facts("small-onnx", {"INT4": 100_000_000}, 70 * 2**20, EngineKind.ORT)
    w = Workload(n_ctx=512, n_prompt=64, n_gen=64)
    ranked = plan([big, small, onnx], prof, w)
    assert [p.model for p in ranked if p.fits] == ["small-onnx", "small.gguf"]  # faster first
    assert choose(ranked, [big, small, onnx], prof, w).model == "small-onnx"
    refused = next(p for p in ranked if p.model == "big.gguf")
    assert not refused.fits and "RAM" in refused.violations[0] and "weights 800 MiB" in refused.violations[0]
    with pytest.raises(PlanRefusedError) as err:
        choose(plan([big], prof, w), [big], prof, w)
    msg = str(err.value)
    assert "big.gguf" in msg and "RAM" in msg and "Recommended instead: big.gguf as Q8_0" in msg  # 458 MiB
    with pytest.raises(PlanRefusedError, match="big.gguf as Q5_K"):  # the most precise type under 340 MiB
        choose(plan([big], prof, w), [big], prof, w, Constraints(max_ram_bytes=340 * 2**20))
    slow = plan([small], prof, w, Constraints(min_tok_s=1e6, max_j_per_token=1e-9))[0]
    assert len(slow.violations) == 2 and not slow.fits


def test_profile_with_missing_fields_names_them(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(PROFILE))
    del bad["ram_bytes"], bad["engines"]["ort"]["base_rss_bytes"]
    bad["engines"]["llamacpp"]["decode_ns_per_weight"]["Q4_0"] = -1
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidProfileError) as err:
        load_profile(path)
    for name in ("ram_bytes", "engines.ort.base_rss_bytes", "decode_ns_per_weight.Q4_0"):
        assert name in str(err.value)
    with pytest.raises(InvalidProfileError, match="no profile"):
        load_profile(tmp_path / "absent.json")


def test_shipped_profiles_load_and_cite_sources() -> None:
    names = builtin_profiles()
    assert len(names) >= 3
    for n in names:
        p = load_profile(n)
        assert "http" in p.source or "issue" in p.source
        assert EngineKind.LLAMACPP in p.engines


def test_facts_of_a_real_gguf(stories_gguf: Path) -> None:
    f = model_facts(stories_gguf)
    assert f.engine is EngineKind.LLAMACPP and f.n_layers == 5 and f.n_kv_heads == 4 and f.head_dim == 8
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172  # q, o; k, v (4 kv heads of 8); gate, up, down
    assert f.weights_read == {"F32": 5 * per_layer + 512 * 64}  # + the tied embedding, read as the output


def test_rapl_counter_wraps_and_battery_counts_down(tmp_path: Path) -> None:
    dom = tmp_path / "powercap" / "intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "energy_uj").write_text("999000000\n")
    (dom / "max_energy_range_uj").write_text("1000000000\n")
    c = EnergyCounter.open(tmp_path)
    assert c is not None and c.source == "measured-rapl"
    before = c.read()
    (dom / "energy_uj").write_text("2000000\n")  # wrapped past the range
    assert c.joules_between(before, c.read()) == pytest.approx(3.0)
    bat = tmp_path / "b" / "power_supply" / "BAT0"
    bat.mkdir(parents=True)
    (bat / "energy_now").write_text("1000\n")
    b = EnergyCounter.open(tmp_path / "b")
    assert b is not None and b.source == "measured-battery"
    assert b.joules_between((1000,), (900,)) == pytest.approx(100 * 3.6e-3)
    assert EnergyCounter.open(tmp_path / "none") is None
    assert estimate_j(2.0, None)[0] is None and "unknown" in estimate_j(2.0, None)[1]
