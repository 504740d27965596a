"""SmolLM2 Q4_1/Q8_0 GGUF -> F32/F16 GGUF: bit-exact against gguf-py's reference, metadata kept, still chats.

The F16 checks run on the conftest's ``smollm2_f16``: the reference every other capability compares
against, made by this converter (and cached), so a stale or wrong cached reference fails here.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edgegen.formats.gguf_file import open_reader
from edgegen.runtime.engine import Engine, SamplingParams

pytestmark = pytest.mark.slow

_CHANGED = {"general.file_type", "general.quantization_version"}


@pytest.fixture(scope="module")
def source(smollm2_q4_1: Path):
    return open_reader(smollm2_q4_1)


@pytest.fixture(scope="module")
def out32(smol_f32: Path):
    return open_reader(smol_f32)


@pytest.fixture(scope="module")
def out16(smollm2_f16: Path):
    return open_reader(smollm2_f16)


def _raw(field) -> bytes:
    return b"".join(bytes(p) for p in field.parts[1:])  # everything after the key name: type and value


def _reference(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


def test_f32_equals_reference_bit_for_bit(source, out32) -> None:
    out = {t.name: t for t in out32.tensors}
    assert list(out) == [t.name for t in source.tensors]
    quantized = 0
    for t in source.tensors:
        got = out[t.name]
        assert got.tensor_type == gguf.GGMLQuantizationType.F32
        want = _reference(t)
        arr = np.asarray(got.data).reshape(want.shape)
        assert arr.dtype == np.float32
        assert np.array_equal(arr.view(np.uint32), want.view(np.uint32)), t.name  # bits, not just values
        quantized += t.tensor_type.name.startswith("Q")
    assert quantized == 211  # 210 Q4_1 + 1 Q8_0: the test really went through the block decoders


def test_f16_equals_reference_rounded(source, out16) -> None:
    out = {t.name: t for t in out16.tensors}
    for t in source.tensors:
        got, want = out[t.name], _reference(t)
        if len(t.shape) == 1:
            assert got.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            assert np.array_equal(np.asarray(got.data).reshape(want.shape), want), t.name
        else:
            assert got.tensor_type == gguf.GGMLQuantizationType.F16, t.name
            arr = np.asarray(got.data).reshape(want.shape)
            assert np.array_equal(arr.view(np.uint16), want.astype(np.float16).view(np.uint16)), t.name


def test_metadata_carried_over(source, out32, out16) -> None:
    for out, file_type in ((out32, gguf.LlamaFileType.ALL_F32), (out16, gguf.LlamaFileType.MOSTLY_F16)):
        keys = {k for k in source.fields if not k.startswith("GGUF.")} - _CHANGED
        assert keys <= set(out.fields)
        for k in keys:
            assert out.fields[k].types == source.fields[k].types, k
            assert _raw(out.fields[k]) == _raw(source.fields[k]), k
        assert out.fields["general.file_type"].contents() == file_type
        assert "general.quantization_version" not in out.fields
        assert "tokenizer.chat_template" in out.fields and len(out.fields["tokenizer.ggml.merges"].data) == 48900


def test_dequantized_model_chats(smollm2_f16: Path) -> None:
    with Engine(smollm2_f16, n_ctx=512, n_threads=1) as engine:
        reply = engine.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams.greedy(24))
    assert "Paris" in reply.text
