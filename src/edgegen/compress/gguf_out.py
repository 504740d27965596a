"""Writing a quantized GGUF: the source's metadata, then tensors in planned types, atomically.

``file_bytes(...)`` predicts the exact size of the output for a plan (header + every tensor padded to
the 32-byte alignment), so budgets are met to the byte. ``write_quantized(...)`` lays out the header,
then asks ``produce(name)`` for each tensor's stored array in turn (only one is needed in memory at
a time) and writes it. The file goes to a temporary name in the output's folder and is moved over
``out`` with ``os.replace`` only when complete: on any failure nothing is left at ``out``.
This module does not choose types or compute values.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType

from edgegen.errors import QuantizationError
from edgegen.formats.dequant import metadata_copier
from edgegen.formats.gguf_write import atomic_output

ALIGN = 32
FILE_TYPES = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "Q4_0": LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": LlamaFileType.MOSTLY_Q4_1, "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0, "IQ4_NL": LlamaFileType.MOSTLY_IQ4_NL, "Q2_K": LlamaFileType.MOSTLY_Q2_K,
    "Q3_K": LlamaFileType.MOSTLY_Q3_K_M, "Q4_K": LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K": LlamaFileType.MOSTLY_Q5_K_M, "Q6_K": LlamaFileType.MOSTLY_Q6_K,
}


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    qtype: str  # ggml type name
    nbytes: int


def padded(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def dominant_file_type(plan: Sequence[OutTensor]) -> int:
    """The ``general.file_type`` llama.cpp would guess: the type holding most 2-D parameters."""
    counts: Counter[str] = Counter()
    for t in plan:
        if len(t.shape) >= 2:
            counts[t.qtype] += int(np.prod(t.shape))
    top = counts.most_common(1)[0][0] if counts else "F32"
    return int(FILE_TYPES.get(top, LlamaFileType.GUESSED))


def _writer_with_header(path: Path, reader: Any, arch: str, plan: Sequence[OutTensor]) -> GGUFWriter:
    writer = GGUFWriter(path, arch)
    metadata_copier(reader, dominant_file_type(plan))(writer)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for t in plan:
        qtype = GGMLQuantizationType[t.qtype]
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dtype = np.dtype(np.float32 if qtype == GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(t.name, t.shape, dtype, t.nbytes)
        else:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def header_bytes(reader: Any, arch: str, plan: Sequence[OutTensor]) -> int:
    """Bytes before the first tensor (metadata and tensor infos, padded); independent of the types."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "header.gguf"
        writer = _writer_with_header(path, reader, arch, plan)
        writer.close()
        return padded(path.stat().st_size)


def file_bytes(header: int, plan: Sequence[OutTensor]) -> int:
    return header + sum(padded(t.nbytes) for t in plan)


def write_quantized(
    out: Path,
    reader: Any,
    arch: str,
    plan: Sequence[OutTensor],
    produce: Callable[[OutTensor], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``plan`` to ``out`` atomically; ``produce(t)`` returns tensor t's stored array."""
    with atomic_output(out) as tmp:
        writer = _writer_with_header(tmp, reader, arch, plan)
        try:
            for i, t in enumerate(plan):
                data = np.ascontiguousarray(produce(t))
                if data.nbytes != t.nbytes:
                    raise QuantizationError(f"{t.name}: produced {data.nbytes} bytes, planned {t.nbytes}")
                writer.write_tensor_data(data)
                if progress:
                    progress(i + 1, len(plan))
            writer.flush()
        finally:
            writer.close()
    return out
