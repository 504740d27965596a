"""Field fault: benchmarks that lie under load (``make demo`` with one busy core printed llama.cpp
Q4_K_M at 1.8 tok/s and edgegen at 128.9: a 70x "win" of scheduling noise). The kind: every speed figure
comes from interleaved rounds with median and spread, ratios from the same rounds, at most the idle
cores, a plain noisy flag, and no bar the spread does not support."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.evaluate.rounds import Noise, Spread, idle_cores, interleave, ratios, supported
from edgegen.report.plots import speed_bars


def test_spread_and_ratios_from_the_same_rounds() -> None:
    s = Spread.of([10.0, 12.0, 11.0])
    assert (s.median, s.low, s.high, s.n) == (11.0, 10.0, 12.0, 3) and 0.07 < s.cv < 0.08
    r = ratios([10.0, 5.0, 10.0], [20.0, 10.0, 20.0])  # a slow spell hit both: the ratio does not move
    assert (r.median, r.low, r.high, r.cv) == (2.0, 2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_the_field_report_is_flagged_noisy_and_claims_nothing() -> None:
    anchor = [1.8, 120.0, 118.0]  # llama.cpp's barrier spin collapsed in one round
    ours = [128.9, 125.0, 127.0]
    noise = Noise(load_before=1.0, threads=2, cores=2,
                  max_cv=max(Spread.of(anchor).cv, Spread.of(ours).cv))
    assert noise.noisy and len(noise.reasons) == 2  # wild rounds, and a busy core under a 2-thread run
    assert not supported(ratios(anchor, ours), noise)
    rows = [{"label": "llama.cpp Q4_K_M", "decode_tokens_per_s": 118.0, "decode_spread": Spread.of(anchor).to_dict(),
             "decode_ratio_to_anchor": ratios(anchor, anchor).to_dict()},
            {"label": "edgegen", "decode_tokens_per_s": 127.0, "decode_spread": Spread.of(ours).to_dict(),
             "decode_ratio_to_anchor": ratios(anchor, ours).to_dict()}]
    assert speed_bars(rows, noise.to_dict(), "llama.cpp Q4_K_M") == []  # no bar at all on a noisy machine


def test_a_bar_is_solid_only_when_every_round_agrees() -> None:
    quiet = Noise(load_before=0.1, threads=1, cores=2, max_cv=0.03).to_dict()
    base = [100.0, 101.0, 99.0]

    def row(label: str, xs: list[float]) -> dict:
        return {"label": label, "decode_tokens_per_s": Spread.of(xs).median, "decode_spread": Spread.of(xs).to_dict(),
                "decode_ratio_to_anchor": ratios(base, xs).to_dict()}

    bars = speed_bars([row("anchor", base), row("faster", [120.0, 119.0, 121.0]), row("same", [99.0, 102.0, 100.0])],
                      quiet, "anchor")
    assert [b["supported"] for b in bars] == [True, True, False]
    assert bars[1]["low"] == 119.0 and bars[1]["high"] == 121.0


def test_idle_cores_and_load_rule() -> None:
    assert idle_cores(2, 0.2) == 2 and idle_cores(2, 1.1) == 1 and idle_cores(2, 7.0) == 1
    assert not Noise(load_before=1.0, threads=1, cores=2, max_cv=0.02).noisy  # one busy core, one thread: fine
    assert Noise(load_before=1.0, threads=2, cores=2, max_cv=0.02).noisy


def test_interleave_alternates_variants() -> None:
    calls: list[str] = []

    def measure(label: str) -> dict[str, float]:
        calls.append(label)
        return {"x": float(len(calls))}

    out = interleave(["A", "B"], measure, 3)
    assert calls == ["A", "B", "A", "B", "A", "B"] and out["A"]["x"] == [1.0, 3.0, 5.0]


def test_run_bench_many_reports_spread_and_same_round_ratios(stories_gguf: Path) -> None:
    from edgegen.evaluate.bench import run_bench_many

    a, b = run_bench_many([stories_gguf, stories_gguf], prompt_tokens=16, gen_tokens=16, rounds=2,
                          n_threads=1, bandwidth=1e9)
    for r in (a, b):
        assert r.rounds == 2 and r.decode_spread["n"] == 2 and r.n_threads == 1
        assert r.decode_spread["low"] <= r.decode_tokens_per_s <= r.decode_spread["high"]
        assert set(r.noise) >= {"noisy", "reasons", "load_before", "max_cv"}
    assert a.decode_ratio_to_first["median"] == 1.0 and a.decode_ratio_to_first["cv"] == 0.0


@pytest.mark.parametrize("n", range(1, 10))
def test_williams_orders_balance_positions_and_predecessors(n):
    from collections import Counter

    from edgegen.evaluate.rounds import williams_orders

    orders = williams_orders(n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    positions = Counter((v, i) for o in orders for i, v in enumerate(o))
    assert len(set(positions.values())) == 1 and len(positions) == n * n
    pairs = Counter((a, b) for o in orders for a, b in zip(o, o[1:]))
    assert len(pairs) == n * (n - 1) and len(set(pairs.values())) <= 1


def test_median_interval_ranks_and_coverage() -> None:
    from edgegen.evaluate.rounds import median_interval

    # n = 5: no pair of order statistics reaches 95%, so the whole range, with its coverage 1 - 2/32
    small = median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (small.low, small.high, small.ranks) == (1.0, 5.0, (1, 5)) and small.coverage == pytest.approx(0.9375)
    # n = 20: the sign-test table gives ranks 6 and 15 (coverage 0.9586); rank 7 would give 0.8847
    mi = median_interval([float(x) for x in range(20, 0, -1)])
    assert mi.ranks == (6, 15) and (mi.low, mi.high) == (6.0, 15.0) and mi.coverage == pytest.approx(0.95861, abs=1e-4)
    assert mi.median == 10.5
    with pytest.raises(ValueError):
        median_interval([])
    with pytest.raises(ValueError):
        median_interval([1.0], level=1.0)


def test_median_interval_covers_the_true_median_about_as_often_as_it_says() -> None:
    import random

    from edgegen.evaluate.rounds import median_interval

    rng = random.Random(7)
    hits = 0
    trials = 2000
    for _ in range(trials):  # a skewed distribution (exponential, true median ln 2), 25 rounds each
        mi = median_interval([rng.expovariate(1.0) for _ in range(25)])
        hits += mi.low <= 0.6931 <= mi.high
    assert mi.coverage >= 0.95
    assert 0.94 <= hits / trials <= 0.995  # coverage 0.957 for n = 25; a wrong rank would miss this band
