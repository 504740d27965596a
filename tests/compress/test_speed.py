"""The decode and prefill cost model: which tensors count, and the formats' order."""

from __future__ import annotations

import pytest

from edgegen.compress.speed import DECODE_NS_PER_WEIGHT, PREFILL_NS_PER_WEIGHT, decode_cost, prefill_cost


def test_untied_embedding_is_only_looked_up():
    tied = [("token_embd.weight", (100, 64), "Q8_0"), ("blk.0.attn_q.weight", (64, 64), "Q4_0")]
    untied = tied + [("output.weight", (100, 64), "Q4_0")]
    assert decode_cost(tied) > decode_cost(tied[1:])
    assert decode_cost(untied) == decode_cost(tied[1:] + [("output.weight", (100, 64), "Q4_0")])


def test_norms_cost_nothing_and_fast_formats_are_cheaper():
    assert decode_cost([("blk.0.attn_norm.weight", (64,), "F32")]) == 0
    order = sorted(DECODE_NS_PER_WEIGHT, key=DECODE_NS_PER_WEIGHT.get)
    for fast in ("Q4_0", "IQ4_NL"):  # the repacked formats beat every other 32-wide one
        assert all(order.index(fast) < order.index(t) for t in ("Q4_1", "Q5_0", "Q5_1", "Q8_0"))
    assert max(order.index(t) for t in ("Q4_1", "Q5_0", "Q5_1", "Q8_0")) < order.index("F16") < order.index("F32")


def test_profile_from_the_bench_json_replaces_and_scales(tmp_path):
    import json

    from edgegen.compress.speed import load_profile

    bench = {"formats": {"Q4_0": {"ns_per_weight_1thread": 0.2, "ns_per_weight_2threads": 0.1},
                         "Q8_0": {"ns_per_weight_1thread": 0.1}}}
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(bench))
    costs = load_profile(path)
    assert costs["Q4_0"] == 0.2 and costs["Q8_0"] == 0.1  # this CPU: Q8_0 is the fast one
    # formats it does not name keep their place relative to ours, scaled by the median ratio
    ratios = sorted([0.2 / DECODE_NS_PER_WEIGHT["Q4_0"], 0.1 / DECODE_NS_PER_WEIGHT["Q8_0"]])
    assert costs["F16"] == pytest.approx(DECODE_NS_PER_WEIGHT["F16"] * sum(ratios) / 2)
    assert load_profile(path, key="ns_per_weight_2threads")["Q4_0"] == 0.1

    plan = [("blk.0.ffn_up.weight", (64, 64), "Q8_0")]
    other = [("blk.0.ffn_up.weight", (64, 64), "Q4_0")]
    assert decode_cost(plan) > decode_cost(other)  # our CPU
    assert decode_cost(plan, costs) < decode_cost(other, costs)  # the profiled one


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"formats": {"Q9_9": 1}}', '{"Q4_0": -1}'])
def test_bad_profile_is_one_clear_error(tmp_path, text):
    from edgegen.compress.speed import load_profile
    from edgegen.errors import UserInputError

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserInputError, match="speed profile"):
        load_profile(path)


def test_prefill_skips_the_output_matrix_and_the_lookup():
    body = [("blk.0.attn_q.weight", (64, 64), "Q4_0"), ("blk.0.attn_norm.weight", (64,), "F32")]
    tied = [("token_embd.weight", (100, 64), "Q8_0"), *body]
    untied = [*tied, ("output.weight", (100, 64), "Q6_K")]
    assert prefill_cost(tied) == prefill_cost(untied) == prefill_cost(body) > 0
    assert prefill_cost(body) == pytest.approx(PREFILL_NS_PER_WEIGHT["Q4_0"] * 64 * 64 * 1e-6)
    assert decode_cost(tied) > decode_cost(body)  # decode reads the tied output


def test_prefill_table_ranks_the_repacked_formats_ahead_of_q4_1():
    # measured by bench/format_speed.py: Q4_0, IQ4_NL and Q4_K have repacked GEMM kernels on AVX2,
    # Q4_1 has none, so its prefill costs more than theirs although its decode cost is close to Q8_0's
    for fast in ("Q4_0", "IQ4_NL", "Q4_K"):
        assert PREFILL_NS_PER_WEIGHT[fast] < PREFILL_NS_PER_WEIGHT["Q4_1"]
    assert set(PREFILL_NS_PER_WEIGHT) == set(DECODE_NS_PER_WEIGHT)


def test_profile_prefill_costs_and_the_decode_only_fallback(tmp_path):
    import json

    from edgegen.compress.speed import load_profile

    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"formats": {
        "Q4_0": {"ns_per_weight_1thread": 2 * DECODE_NS_PER_WEIGHT["Q4_0"], "prefill_ns_per_weight_1thread": 0.5},
        "Q8_0": {"ns_per_weight_1thread": 2 * DECODE_NS_PER_WEIGHT["Q8_0"]}}}))
    pre = load_profile(path, "prefill_ns_per_weight_1thread")
    assert pre["Q4_0"] == 0.5
    assert pre["Q4_1"] == pytest.approx(PREFILL_NS_PER_WEIGHT["Q4_1"] * 0.5 / PREFILL_NS_PER_WEIGHT["Q4_0"])
    path.write_text(json.dumps({"formats": {"Q4_0": {"ns_per_weight_1thread": 2 * DECODE_NS_PER_WEIGHT["Q4_0"]}}}))
    pre = load_profile(path, "prefill_ns_per_weight_1thread")  # decode only: the prefill table, scaled alike
    assert pre == pytest.approx({k: 2 * v for k, v in PREFILL_NS_PER_WEIGHT.items()})
