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
