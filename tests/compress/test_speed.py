"""The decode cost model: which tensors count, and the formats' order."""

from __future__ import annotations

from edgegen.compress.speed import DECODE_NS_PER_WEIGHT, decode_cost


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
