"""PSI, Jensen-Shannon and Kolmogorov-Smirnov written out by hand, checked against values worked
out on paper and against the published critical values of the Kolmogorov distribution."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegen.drift.monitor import DriftMonitor, DriftThresholds, Window, compare
from edgegen.drift.signals import char_class, request_signals
from edgegen.drift.stats import (
    bin_counts,
    js_divergence,
    kolmogorov_q,
    ks_2samp,
    ks_statistic,
    psi,
    quantile_edges,
)

samples = st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=40)


def test_psi_known_value() -> None:
    # proportions 0.5/0.5 -> 0.4/0.6: 0.1*ln(0.5/0.4) + 0.1*ln(0.6/0.5)
    assert psi([50, 50], [40, 60]) == pytest.approx(0.1 * math.log(1.25) + 0.1 * math.log(1.2), rel=1e-9)
    assert psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)  # same proportions
    assert psi([100, 0], [0, 100]) > 5  # eps-smoothed, large and finite
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_js_known_values() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 3], [1, 1]) == pytest.approx(0.0, abs=1e-12)
    # p=(1,0), q=(.5,.5), m=(.75,.25): 0.5*log2(1/.75) + 0.5*(0.5*log2(.5/.75) + 0.5*log2(.5/.25))
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert js_divergence([1, 0], [1, 1]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.311278, abs=1e-6)


def test_kolmogorov_critical_values() -> None:
    # the textbook table: P(K > 1.2239) = 0.10, P(K > 1.3581) = 0.05, P(K > 1.6276) = 0.01
    assert kolmogorov_q(1.2239) == pytest.approx(0.10, abs=2e-4)
    assert kolmogorov_q(1.3581) == pytest.approx(0.05, abs=2e-4)
    assert kolmogorov_q(1.6276) == pytest.approx(0.01, abs=2e-4)
    assert kolmogorov_q(0.5) == pytest.approx(1 - 0.0361, abs=2e-4)  # P(K <= 0.5) = 0.0361
    assert kolmogorov_q(0.0) == 1.0 and kolmogorov_q(10.0) == pytest.approx(0.0, abs=1e-12)


def test_ks_statistic_known_values() -> None:
    assert ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks_statistic([1, 2, 3], [3, 2, 1]) == 0.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert ks_statistic([1, 1, 1, 2], [1, 2, 2, 2]) == 0.5  # ties: compare after each distinct value
    d, p = ks_2samp(list(range(100)), list(range(100)))
    assert d == 0.0 and p == 1.0
    d, p = ks_2samp(list(range(50)), list(range(50, 100)))
    assert d == 1.0 and p < 1e-10


def test_quantile_edges_match_linear_interpolation() -> None:
    assert quantile_edges(list(range(1, 101)), 4) == pytest.approx([25.75, 50.5, 75.25])  # numpy's values
    assert quantile_edges([5.0] * 10, 4) == [5.0]  # duplicate edges collapse
    assert bin_counts([0, 25.75, 26, 100, 1000], [25.75, 50.5, 75.25]) == [2, 1, 0, 2]


def _ks_brute(x: list[float], y: list[float]) -> float:
    def cdf(s: list[float], v: float) -> float:
        return sum(1 for a in s if a <= v) / len(s)

    return max(abs(cdf(x, v) - cdf(y, v)) for v in x + y)


@given(samples, samples)
def test_ks_statistic_matches_brute_force(x: list[float], y: list[float]) -> None:
    assert ks_statistic(x, y) == pytest.approx(_ks_brute(x, y), abs=1e-12)
    assert ks_statistic(x, y) == pytest.approx(ks_statistic(y, x), abs=1e-12)


@given(st.lists(st.integers(0, 50), min_size=3, max_size=3), st.lists(st.integers(0, 50), min_size=3, max_size=3))
def test_divergences_are_bounded_and_symmetric(p: list[int], q: list[int]) -> None:
    if sum(p) == 0 or sum(q) == 0:
        return
    js = js_divergence(p, q)
    assert 0.0 <= js <= 1.0 + 1e-12 and js == pytest.approx(js_divergence(q, p), abs=1e-12)
    assert psi(p, q) >= 0 and psi(p, q) == pytest.approx(psi(q, p), rel=1e-9)


def test_signals_of_a_prompt() -> None:
    s = request_signals("Hi, Bob! 42 é", token_logprobs=[-1.0, -3.0, float("nan")])
    assert s.numeric["mean_logprob"] == -2.0  # non-finite values are ignored
    assert s.char_classes["digit"] == 2 and s.char_classes["non_ascii"] == 1 and s.char_classes["upper"] == 2
    assert s.letters["b"] == 2 and s.letters["h"] == 1
    assert "mean_logprob" not in request_signals("no logprobs").numeric
    assert [char_class(c) for c in "aZ5!\t\x01é"] == ["lower", "upper", "digit", "punct", "space", "other_ascii",
                                                       "non_ascii"]


def test_same_window_does_not_drift_and_a_shift_does() -> None:
    ref = Window.of(request_signals(f"The quick brown fox {i} jumps over the lazy dog.") for i in range(60))
    same = Window.of(request_signals(f"The quick brown fox {i} jumps over the lazy dog.") for i in range(60, 120))
    assert not compare(ref, same).drift
    shifted = Window.of(request_signals(f"SELECT * FROM t WHERE id = {i * 7919};") for i in range(60))
    r = compare(ref, shifted)
    assert r.drift and any("letters" in x or "frac_" in x for x in r.reasons)


def test_monitor_captures_reference_per_version_and_survives_json() -> None:
    m = DriftMonitor(reference_size=30, window_size=20, thresholds=DriftThresholds(min_samples=10))
    texts = [f"line {i} of a plain English text, with words." for i in range(100)]
    reports = [m.observe(request_signals(t), version=1) for t in texts[:70]]
    got = [r for r in reports if r is not None]
    assert [r.window_index for r in got] == [1, 2] and not any(r.drift for r in got)
    restored = DriftMonitor.from_json(m.to_json(), m.thresholds)
    assert restored.reference.n == 30 and restored.window.n == m.window.n == 0 + 70 - 30 - 40
    restored.observe(request_signals("x"), version=2)  # a new version: a new reference
    assert restored.reference.n == 1 and restored.model_version == 2
    assert m.observe(request_signals("y"), version=1) is None
