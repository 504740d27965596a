"""Block formats against gguf-py's reference decoder: the bytes we write decode to the values we meant.

Property tests (hypothesis) over every registered format: random blocks (including constant, zero,
tiny and wide-range ones) with random positive importance; and random bytes, so every bit position
of every layout is exercised in both directions.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegen.compress.blocks import F16, F32, REGISTRY, storage_type

FORMATS = sorted(REGISTRY.values(), key=lambda q: q.name)
IDS = [q.name for q in FORMATS]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def blocks(draw, block: int):
    """[n, block] float32 values of many shapes: gaussian, heavy-tailed, constant, one-sided, tiny."""
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "cauchy", "const", "positive", "sparse"]))
    scale = draw(st.sampled_from([1e-6, 1e-3, 0.05, 1.0, 30.0]))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((n, block))
    elif kind == "cauchy":
        x = np.clip(rng.standard_cauchy((n, block)), -50, 50)
    elif kind == "const":
        x = np.full((n, block), rng.standard_normal())
    elif kind == "positive":
        x = np.abs(rng.standard_normal((n, block))) + 0.5
    else:
        x = rng.standard_normal((n, block)) * (rng.random((n, block)) < 0.1)
    w = rng.random((n, block)) ** 3 + 1e-3
    return (x * scale).astype(np.float32), w.astype(np.float32)


def _fit_then_pack(qt, x, w, rtn=False):
    grid = qt.fit_rtn(x) if rtn else qt.fit(x, w)
    codes = qt.block_codes(x, grid)
    return qt.values(codes, grid), qt.pack(codes, grid), codes, grid


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
def test_layout_facts_match_gguf(qt):
    block, type_size = gguf.GGML_QUANT_SIZES[qt.ggml]
    assert (qt.block, qt.type_size) == (block, type_size)
    assert qt.block % qt.sub == 0 and len(qt.levels) <= 256


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_bytes_decode_to_the_values_we_intended(qt, data):
    x, w = data.draw(blocks(qt.block))
    for rtn in (False, True):
        intended, raw, codes, grid = _fit_then_pack(qt, x, w, rtn)
        assert raw.dtype == np.uint8 and raw.shape == (len(x), qt.type_size)
        decoded = gguf.quants.dequantize(raw, qt.ggml)
        np.testing.assert_array_equal(decoded, intended)
        assert np.isfinite(intended).all()
        back_codes, fields = qt.unpack(raw)
        np.testing.assert_array_equal(back_codes, codes)
        np.testing.assert_array_equal(qt.values(back_codes, qt.grid_from_fields(fields)), intended)


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_any_bytes_decode_like_gguf(qt, seed):
    """Our unpack + decode of arbitrary bytes equals gguf-py's (covers every bit of the layout)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (4, qt.type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):  # random half-precision fields include inf/NaN
        ours = qt.dequantize(raw)
        theirs = gguf.quants.dequantize(raw, qt.ggml)
        codes, fields = qt.unpack(raw)
        repacked = qt.pack(codes, qt.grid_from_fields(fields))
    np.testing.assert_array_equal(ours, theirs)  # NaNs compare equal by position
    np.testing.assert_array_equal(repacked, raw)


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_weighted_rounding_never_worse_than_round_to_nearest(qt, data):
    x, w = data.draw(blocks(qt.block))
    ours, _, _, _ = _fit_then_pack(qt, x, w)
    rtn, _, _, _ = _fit_then_pack(qt, x, w, rtn=True)
    err = (w * (x.astype(np.float64) - ours) ** 2).sum(axis=1)
    err_rtn = (w * (x.astype(np.float64) - rtn) ** 2).sum(axis=1)
    assert (err <= err_rtn * (1 + 1e-6) + 1e-30).all()


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
def test_weighted_rounding_helps_on_gaussian_weights(qt):
    """On realistic data the search must actually pay (not merely tie with round-to-nearest)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, qt.block)) * 0.02).astype(np.float32)
    w = (rng.random((64, qt.block)) ** 2 + 0.01).astype(np.float32)
    ours, _, _, _ = _fit_then_pack(qt, x, w)
    rtn, _, _, _ = _fit_then_pack(qt, x, w, rtn=True)
    assert (w * (x - ours) ** 2).sum() < 0.97 * (w * (x - rtn) ** 2).sum()


@pytest.mark.parametrize("qt", FORMATS, ids=IDS)
def test_quantize_rows_matches_blockwise_and_reshapes(qt):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2 * qt.block)).astype(np.float32)
    raw = qt.quantize(x)
    assert raw.shape == (3, 2 * qt.type_size)
    back = qt.dequantize(raw)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back, gguf.quants.dequantize(raw, qt.ggml))
    assert np.abs(back - x).max() < np.abs(x).max()  # sanity: not garbage


def test_float_fallbacks_round_trip():
    x = np.random.default_rng(2).standard_normal((2, 7)).astype(np.float32)
    np.testing.assert_array_equal(F32.dequantize(F32.quantize(x)), x)
    np.testing.assert_array_equal(F16.dequantize(F16.quantize(x)), x.astype(np.float16).astype(np.float32))
    assert F16.fits(7) and F16.row_bytes(7) == 14
    assert storage_type("q4_k") is REGISTRY[gguf.GGMLQuantizationType.Q4_K]
