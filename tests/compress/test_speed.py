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


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx
"""
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""


def test_cpu_kind_is_read_from_the_first_processor_of_x86_and_arm_cpuinfo():
    from edgegen.compress.speed import cpu_kind_of

    xeon = cpu_kind_of(XEON)
    assert xeon.model == "Intel(R) Xeon(R) Platinum 8488C"
    assert xeon.isa == ("amx_int8", "avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512f",
                        "avx512vl", "f16c", "fma")
    pi = cpu_kind_of(PI5)
    assert pi.model == "Arm CPU part 0xd0b" and pi.isa == ("asimd", "asimddp")


def test_a_profile_from_another_cpus_kernels_is_flagged_and_the_same_kind_is_not(tmp_path):
    import json

    from edgegen.compress.speed import BUILTIN_PROFILE_CPU, CpuKind, cpu_kind_of, profile_cpu_kind, profile_mismatch

    xeon = cpu_kind_of(XEON)
    warning = profile_mismatch(BUILTIN_PROFILE_CPU, xeon)
    assert warning and "AMD EPYC" in warning and "avx512f" in warning and "--speed-profile" in warning
    assert profile_mismatch(xeon, CpuKind("another name", xeon.isa)) is None  # same kernels
    assert profile_mismatch(None, xeon) is None and profile_mismatch(xeon, None) is None
    measured = tmp_path / "profile.json"
    measured.write_text(json.dumps({"cpu": xeon.to_dict(), "formats": {"Q4_0": {"ns_per_weight_1thread": 0.03}}}))
    assert profile_cpu_kind(measured) == xeon
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"Q4_0": 0.03}))
    assert profile_cpu_kind(plain) is None and profile_cpu_kind(None) == BUILTIN_PROFILE_CPU


def test_a_speed_budget_carries_the_warning_only_when_the_profile_is_not_this_cpus(stories_gguf, tmp_path):
    import json

    from edgegen.compress.pipeline import Budget
    from edgegen.compress.speed import host_cpu_kind

    host = host_cpu_kind()
    if host is None:
        pytest.skip("no /proc/cpuinfo here")
    here = tmp_path / "here.json"
    here.write_text(json.dumps({"cpu": host.to_dict(), "formats": {"Q4_0": {"ns_per_weight_1thread": 0.03}}}))
    assert Budget.of(max_size_mib=1, speed_of=stories_gguf, speed_profile=here).profile_warning is None
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"cpu": {"model": "a CPU with no SIMD", "isa": []},
                                     "formats": {"Q4_0": {"ns_per_weight_1thread": 0.03}}}))
    assert "a CPU with no SIMD" in Budget.of(max_size_mib=1, speed_of=stories_gguf,
                                             speed_profile=elsewhere).profile_warning
    assert Budget.of(max_size_mib=1, speed_profile=elsewhere).profile_warning is None  # no speed limit
