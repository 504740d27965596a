"""The quality metrics against slow, obviously-correct references and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgegen.evaluate.metrics import QualityAccumulator, chunk_positions, log_softmax, score_chunk


def _slow_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p = [math.exp(x) for x in p_logits]
    q = [math.exp(x) for x in q_logits]
    sp, sq = sum(p), sum(q)
    return sum((qi / sq) * math.log((qi / sq) / (pi / sp)) for pi, qi in zip(p, q))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (8, 5), elements=st.floats(-8, 8)), arrays(np.float64, (8, 5), elements=st.floats(-8, 8)))
def test_kl_matches_slow_reference(model: np.ndarray, ref: np.ndarray) -> None:
    tokens = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    s = score_chunk(model, ref, tokens)
    first, last = chunk_positions(8)
    for k, row in enumerate(range(first, last)):
        assert abs(s.kl[k] - _slow_kl(model[row], ref[row])) < 1e-9
        assert abs(s.nll[k] - (-log_softmax(model[row : row + 1])[0, tokens[row + 1]])) < 1e-12


def test_identical_distributions_give_zero_kl_and_full_agreement() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 50))
    tokens = rng.integers(0, 50, size=16)
    acc = QualityAccumulator()
    acc.add(score_chunk(logits, logits.copy(), tokens))
    s = acc.summary()
    assert s["kl_mean"] == 0.0 and s["top1_agreement"] == 1.0 and s["ppl"] == s["ppl_ref"]
    assert s["n_tokens_scored"] == 7  # rows 8..14 of a 16-token chunk


def test_uniform_model_has_perplexity_equal_to_vocabulary() -> None:
    tokens = np.arange(10) % 4
    s = score_chunk(np.zeros((10, 4)), np.zeros((10, 4)), tokens)
    assert np.allclose(np.exp(s.nll.mean()), 4.0)


def test_known_kl_value() -> None:
    # ref puts p=(0.5, 0.5), model (0.25, 0.75): KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    ref = np.log(np.array([[0.5, 0.5]] * 4))
    model = np.log(np.array([[0.25, 0.75]] * 4))
    s = score_chunk(model, ref, np.zeros(4, dtype=int))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert np.allclose(s.kl, expected)
    assert not s.top1_same.any()  # ref's argmax is index 0 (tie broken low), model's is 1
