"""Pure parts of federated learning: robust aggregation rules, poisoning, the DP accountant, the
options that do not combine, and the quality judge that decides whether an adapter is published."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.errors import LearnConfigError
from edgegen.learn.config import LearnConfig, StrategyName
from edgegen.learn.loop import judge
from edgegen.learn.privacy import epsilon
from edgegen.learn.robust import (
    Attack,
    RobustRule,
    aggregate,
    clipped_mean,
    mean,
    median,
    norm,
    poison,
    trimmed_mean,
)


def _updates(rng: np.random.Generator, n: int) -> list[list[np.ndarray]]:
    return [[rng.normal(0, 0.01, (6, 2)).astype(np.float32), rng.normal(0, 0.01, (3,)).astype(np.float32)]
            for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 9), st.integers(0, 2**31 - 1))
def test_robust_rules_equal_the_mean_when_every_update_is_the_same(n: int, seed: int) -> None:
    u = _updates(np.random.default_rng(seed), 1)[0]
    same = [u] * n
    for rule in RobustRule:
        out = aggregate(same, rule, clip=10.0, beta=0.2)
        for a, b in zip(out, u):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 9), st.integers(0, 2**31 - 1), st.floats(0.001, 1.0))
def test_clipped_mean_norm_is_bounded_by_the_clip(n: int, seed: int, clip: float) -> None:
    ups = [[a * 100 for a in u] for u in _updates(np.random.default_rng(seed), n)]
    assert norm(clipped_mean(ups, clip)) <= clip * (1 + 1e-5)


@pytest.mark.parametrize("attack", [Attack.SCALE10, Attack.SIGNFLIP])
def test_one_poisoned_client_in_five_moves_the_median_far_less_than_the_mean(attack: Attack) -> None:
    rng = np.random.default_rng(1)
    honest_dir = [rng.normal(0, 0.01, (8, 4)).astype(np.float32)]
    old = [np.zeros((8, 4), np.float32)]
    clients = [[honest_dir[0] + rng.normal(0, 0.001, (8, 4)).astype(np.float32)] for _ in range(5)]
    sent = clients[:4] + [poison(clients[4], old, attack)]
    clean = mean(clients)
    err = {name: norm([a - b for a, b in zip(rule(sent), clean)]) / norm(clean)
           for name, rule in (("mean", mean), ("median", median), ("trimmed", lambda u: trimmed_mean(u, 0.2)))}
    assert err["mean"] > 0.35  # 10x: +1.8 of the clean mean; flip: -0.4
    assert err["median"] < 0.15 and err["trimmed"] < 0.15, err


def test_poison_attacks_are_what_they_say() -> None:
    old, new = [np.ones(3, np.float32)], [np.full(3, 1.5, np.float32)]
    np.testing.assert_allclose(poison(new, old, Attack.SCALE10)[0], 1 + 10 * 0.5)
    np.testing.assert_allclose(poison(new, old, Attack.SIGNFLIP)[0], 0.5)
    np.testing.assert_allclose(poison(new, old, Attack.NONE)[0], 1.5)


def test_trimmed_mean_refuses_a_beta_that_drops_everything() -> None:
    with pytest.raises(ValueError):
        trimmed_mean(_updates(np.random.default_rng(0), 4), 0.5)


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    e1 = epsilon(1.0, 1.0, 1, 1e-5)
    e5 = epsilon(1.0, 1.0, 5, 1e-5)
    assert 0 < e1 < e5
    assert epsilon(2.0, 1.0, 5, 1e-5) < e5
    assert epsilon(1.0, 0.1, 5, 1e-5) < e5  # amplification by sampling
    assert math.isinf(epsilon(0.0, 1.0, 3, 1e-5))


def test_robust_rules_do_not_combine_with_secagg() -> None:
    with pytest.raises(LearnConfigError, match="SecAgg"):
        LearnConfig(robust=RobustRule.MEDIAN, secagg=True, min_clients=3).check()
    LearnConfig(robust=RobustRule.MEDIAN, secagg=False, min_clients=3).check()
    with pytest.raises(LearnConfigError):
        LearnConfig(secagg=True, min_clients=2).check()
    with pytest.raises(LearnConfigError):
        LearnConfig(robust=RobustRule.MEDIAN, secagg=False, strategy=StrategyName.FEDADAM).check()


def test_run_config_round_trip() -> None:
    cfg = LearnConfig(model="/m.gguf", rounds=4, strategy=StrategyName.FEDPROX, secagg=False,
                      robust=RobustRule.TRIMMED_MEAN, noise_multiplier=0.0, lr=1e-3)
    rc = cfg.to_run_config()
    assert rc["strategy"] == "fedprox" and rc["noise-multiplier"] == 0.0
    assert LearnConfig.from_run_config(rc) == cfg
    assert LearnConfig().secagg and LearnConfig().dp.enabled  # privacy on by default


def test_judge_publishes_only_an_adapter_no_device_regrets() -> None:
    good = [{"device": "a", "ppl_base": 10.0, "ppl": 9.0}, {"device": "b", "ppl_base": 20.0, "ppl": 19.0}]
    assert judge(good, 0.02)[0]
    one_worse = good + [{"device": "c", "ppl_base": 10.0, "ppl": 10.5}]
    ok, why = judge(one_worse, 0.02)
    assert not ok and "c" in why
    assert not judge([{"device": "a", "ppl_base": 10.0, "ppl": 10.1}], 0.02)[0]  # no gain
    assert not judge([], 0.02)[0]
