"""Type allocation under a budget, and the row-sampled loss estimate."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.compress.mixed import Candidate, TensorChoice, _hull, allocate, sample_rows
from edgegen.errors import BudgetError


def _choice(name, points):
    return TensorChoice(name, (1, 1), [Candidate(f"T{i}", b, loss) for i, (b, loss) in enumerate(points)])


def test_hull_drops_dominated_and_non_convex_points():
    pts = [Candidate("a", 10, 5.0), Candidate("b", 20, 6.0), Candidate("c", 20, 2.0),
           Candidate("d", 30, 1.9), Candidate("e", 40, 0.1)]
    assert [c.qtype for c in _hull(pts)] == ["a", "c", "e"]


def test_allocation_prefers_the_tensor_where_bytes_buy_most():
    sensitive = _choice("embd", [(100, 10.0), (150, 1.0)])
    robust = _choice("ffn", [(100, 1.0), (150, 0.9)])
    picks = allocate([sensitive, robust], budget_bytes=250)
    assert picks["embd"].nbytes == 150 and picks["ffn"].nbytes == 100


def test_budget_below_smallest_is_a_budget_error():
    with pytest.raises(BudgetError, match="smallest"):
        allocate([_choice("a", [(100, 1.0)]), _choice("b", [(100, 1.0)])], budget_bytes=199)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(1, 50), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=4),
        min_size=1, max_size=4,
    ),
    slack=st.integers(0, 120),
)
def test_allocation_fits_and_is_near_the_exhaustive_optimum(data, slack):
    choices = [_choice(f"t{i}", pts) for i, pts in enumerate(data)]
    budget = sum(min(b for b, _ in pts) for pts in data) + slack
    picks = allocate(choices, budget)
    assert sum(c.nbytes for c in picks.values()) <= budget
    loss = sum(c.loss for c in picks.values())
    best = min(
        sum(c.loss for c in combo)
        for combo in itertools.product(*[t.candidates for t in choices])
        if sum(c.nbytes for c in combo) <= budget
    )
    # greedy on convex hulls: optimal up to the one upgrade that did not fit
    worst_step = max(max(c.loss for c in t.candidates) - min(c.loss for c in t.candidates) for t in choices)
    assert loss <= best + worst_step + 1e-9
    if slack >= sum(max(b for b, _ in pts) for pts in data):
        assert loss == pytest.approx(sum(min(c.loss for c in t.candidates) for t in choices))


def test_row_sampling_estimates_the_total_without_bias():
    rng = np.random.default_rng(0)
    values = rng.exponential(size=2000) ** 3  # heavy-tailed per-row losses
    proxy = values * rng.uniform(0.5, 2, size=2000)  # an imperfect guess of them
    estimates = []
    for seed in range(300):
        rows, w = sample_rows(proxy, 64, np.random.default_rng(seed))
        estimates.append((values[rows] * w).sum())
    assert np.mean(estimates) == pytest.approx(values.sum(), rel=0.05)
    rows, w = sample_rows(proxy, 5000, np.random.default_rng(0))
    assert len(rows) == 2000 and (w == 1).all()


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(1, 50), st.floats(0, 10, allow_nan=False), st.floats(0, 5, allow_nan=False)),
                 min_size=1, max_size=4),
        min_size=1, max_size=4,
    ),
    slack=st.integers(0, 120),
    time_frac=st.floats(0, 1),
)
def test_time_limited_allocation_respects_both_limits(data, slack, time_frac):
    choices = [TensorChoice(f"t{i}", (1, 1), [Candidate(f"T{j}", b, loss, ms) for j, (b, loss, ms) in enumerate(pts)])
               for i, pts in enumerate(data)]
    budget = sum(min(b for b, _, _ in pts) for pts in data) + slack
    fastest = sum(min(ms for _, _, ms in pts) for pts in data)
    slowest = sum(max(ms for _, _, ms in pts) for pts in data)
    max_ms = fastest + time_frac * (slowest - fastest)
    feasible = [
        combo for combo in itertools.product(*[t.candidates for t in choices])
        if sum(c.nbytes for c in combo) <= budget and sum(c.ms for c in combo) <= max_ms + 1e-9
    ]
    if not feasible:
        with pytest.raises(BudgetError):
            allocate(choices, budget, max_ms)
        return
    try:
        picks = allocate(choices, budget, max_ms)
    except BudgetError:
        pytest.fail("a feasible mix exists but the allocator gave up")
    assert sum(c.nbytes for c in picks.values()) <= budget
    assert sum(c.ms for c in picks.values()) <= max_ms + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.lists(st.tuples(st.integers(1, 50), st.floats(0, 10, allow_nan=False), st.floats(0, 5, allow_nan=False),
                           st.floats(0, 5, allow_nan=False)), min_size=1, max_size=4),
        min_size=1, max_size=4,
    ),
    slack=st.integers(0, 120),
    fracs=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_decode_and_prefill_limits_are_both_met_or_refused(data, slack, fracs):
    choices = [TensorChoice(f"t{i}", (1, 1), [Candidate(f"T{j}", b, loss, ms, pre)
                                              for j, (b, loss, ms, pre) in enumerate(pts)])
               for i, pts in enumerate(data)]
    budget = sum(min(p[0] for p in pts) for pts in data) + slack

    def limit(k, frac):
        lo, hi = (sum(f(p[k] for p in pts) for pts in data) for f in (min, max))
        return lo + frac * (hi - lo)

    max_ms, max_pre = limit(2, fracs[0]), limit(3, fracs[1])
    feasible = any(
        sum(c.nbytes for c in combo) <= budget and sum(c.ms for c in combo) <= max_ms + 1e-9
        and sum(c.prefill_ms for c in combo) <= max_pre + 1e-9
        for combo in itertools.product(*[t.candidates for t in choices])
    )
    try:
        picks = allocate(choices, budget, max_ms, max_pre)
    except BudgetError:
        return  # refused: always right when infeasible; the scan may also miss a narrow feasible mix
    assert feasible
    assert sum(c.nbytes for c in picks.values()) <= budget
    assert sum(c.ms for c in picks.values()) <= max_ms * (1 + 1e-9) + 1e-12
    assert sum(c.prefill_ms for c in picks.values()) <= max_pre * (1 + 1e-9) + 1e-12


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(20, 40))
def test_limits_copied_from_another_files_mix_are_met_and_its_loss_is_matched(seed, n):
    """``--speed-of FILE``: the size, decode and prefill limits are those of another mix of the same
    candidates, so a plan meeting all three exists. The first two-limit scan (six weighted limits of 1,
    no search below) refused 13 of 60 such draws; the field case was SmolLM2 at llama.cpp+imatrix
    Q3_K_M's size and speed, where both times bind before the bytes."""
    rng = np.random.default_rng(seed)
    choices = [TensorChoice(f"t{i}", (1, 1), [
        Candidate(f"T{j}", int(rng.integers(1, 51)), float(rng.uniform(0, 10)), float(rng.uniform(0, 5)),
                  float(rng.uniform(0, 5))) for j in range(int(rng.integers(1, 5)))]) for i in range(n)]
    anchor = [t.candidates[int(rng.integers(len(t.candidates)))] for t in choices]
    budget, max_ms, max_pre = (sum(f(c) for c in anchor) for f in (
        lambda c: c.nbytes, lambda c: c.ms, lambda c: c.prefill_ms))
    picks = allocate(choices, budget, max_ms, max_pre)
    assert sum(c.nbytes for c in picks.values()) <= budget
    assert sum(c.ms for c in picks.values()) <= max_ms * (1 + 1e-9)
    assert sum(c.prefill_ms for c in picks.values()) <= max_pre * (1 + 1e-9)
    assert sum(c.loss for c in picks.values()) <= sum(c.loss for c in anchor) + 1e-9


def test_prefill_limit_moves_a_tensor_off_the_format_that_is_fast_only_in_decode():
    # two formats of equal size: "Q4_1" decodes as fast and is more accurate, but prefills 3x slower
    def tensor(name):
        return TensorChoice(name, (1, 1), [Candidate("Q4_1", 10, 1.0, ms=1.0, prefill_ms=3.0),
                                           Candidate("Q4_0", 10, 1.5, ms=1.0, prefill_ms=1.0),
                                           Candidate("Q8_0", 20, 0.1, ms=1.6, prefill_ms=1.2)])

    choices = [tensor("a"), tensor("b")]
    decode_only = allocate(choices, 20, max_ms=2.0)
    assert {c.qtype for c in decode_only.values()} == {"Q4_1"}
    both = allocate(choices, 20, max_ms=2.0, max_prefill_ms=4.0)  # room for one slow prefill only
    assert sorted(c.qtype for c in both.values()) == ["Q4_0", "Q4_1"]
    with pytest.raises(BudgetError, match="prefill"):
        allocate(choices, 20, max_ms=2.0, max_prefill_ms=1.5)
