"""GPTQ rounding inside block formats: exact bytes, batching-invariant, and better on correlated inputs."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgegen.compress.blocks import F16, storage_type
from edgegen.compress.rounding import hessian_error, inverse_cholesky, round_parts, round_tensor


def _problem(rows: int, cols: int, seed: int = 0):
    """Weights and a Hessian from correlated inputs with uneven scales, like a real layer's."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    X = rng.standard_normal((4 * cols, cols)) @ (np.eye(cols) + 0.8 * mix)
    X *= np.exp(rng.standard_normal(cols) * 0.7)  # outlier channels
    H = (X.T @ X / len(X)).astype(np.float32)
    W = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    return W, H


@pytest.mark.parametrize("name", ["Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q6_K"])
def test_gptq_bytes_decode_to_returned_values_and_beat_plain_rounding(name):
    qt = storage_type(name)
    W, H = _problem(16, 512)
    r = round_tensor(W, qt, hessian=H)
    assert r.data.dtype == np.uint8 and r.data.shape == (16, qt.row_bytes(512))
    np.testing.assert_array_equal(gguf.quants.dequantize(r.data, qt.ggml), r.values)
    plain = round_tensor(W, qt, weights=np.diag(H))
    rtn = qt.dequantize(qt.quantize(W, rtn=True))
    e_gptq = hessian_error(W - r.values, H).sum()
    e_plain = hessian_error(W - plain.values, H).sum()
    e_rtn = hessian_error(W - rtn, H).sum()
    assert e_plain < e_rtn
    assert e_gptq < 0.8 * e_plain  # error feedback pays on correlated inputs


def test_rounding_parts_together_equals_rounding_each():
    W, H = _problem(8, 256, seed=1)
    types = [storage_type(n) for n in ("Q4_0", "Q3_K", "IQ4_NL")]
    together = round_parts([W, W[:5], W], types, hessian=H)
    alone = [round_tensor(w, t, hessian=H) for w, t in zip([W, W[:5], W], types)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.data, b.data)


def test_float_parts_and_plain_path():
    W, H = _problem(4, 64, seed=2)
    r16, r40 = round_parts([W, W], [F16, storage_type("Q4_0")], hessian=None)
    assert r16.data.dtype == np.float16
    np.testing.assert_array_equal(r40.values, storage_type("Q4_0").dequantize(r40.data))


def test_inverse_cholesky_survives_dead_inputs_and_singular_hessians():
    W, H = _problem(4, 64, seed=3)
    H[:, 5] = H[5, :] = 0  # an input channel that never fired
    H2 = np.ones((64, 64), np.float32)  # rank one
    for h in (H, H2):
        U = inverse_cholesky(h, 0.01)
        assert U.shape == (64, 64) and bool(np.isfinite(U.numpy()).all())
    r = round_tensor(W, storage_type("Q4_0"), hessian=H2)
    assert np.isfinite(r.values).all()
