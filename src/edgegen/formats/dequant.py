"""A quantized GGUF turned into an F16/F32 GGUF: the full-precision reference for comparing quantizers.

Every tensor goes through gguf-py's reference ``gguf.quants.dequantize`` (so an F32 output equals it
bit for bit, an F16 output equals it rounded to half precision); 1-D tensors (norms, biases) stay
F32 as llama.cpp's own F16 files do; integer tensors are copied unchanged.

Every metadata key is carried over with its type, except
    general.file_type              set to ALL_F32 / MOSTLY_F16
    general.quantization_version   dropped (nothing in the output is quantized)
    general.alignment, GGUF.*      the writer's own
Split (multi-file) GGUFs are refused. This module does not quantize and knows no architecture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError
from edgegen.formats.gguf_write import PlannedTensor

_SKIP_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}
_INT_TYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


def _value(reader_field: Any, vtype: Any, index: int) -> Any:
    """One stored value of a field; strings stay bytes so nothing is re-encoded."""
    import gguf

    part = reader_field.parts[index]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(part)
    return part[0].item()


def metadata_copier(reader: Any, file_type: int, skip: frozenset[str] = frozenset(),
                    rename: tuple[str, str] | None = None):
    """A callback that writes the source's metadata (see the module docstring) into a GGUFWriter;
    keys in ``skip`` are left out; ``rename=(old, new)`` writes keys starting ``old`` as ``new...``
    (the hyper-parameters of one architecture under another's name)."""
    import gguf

    if reader.fields.get("split.count") is not None and int(reader.fields["split.count"].contents()) > 1:
        raise InvalidModelError("this GGUF is one part of a split model; merge it first (llama-gguf-split --merge)")

    def add(writer: Any) -> None:
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key in _SKIP_KEYS or key in skip:
                continue
            vtype = f.types[0]
            if rename is not None and key.startswith(rename[0]):
                key = rename[1] + key[len(rename[0]):]
            if vtype == gguf.GGUFValueType.ARRAY:
                sub = f.types[1] if len(f.types) > 1 else None
                if sub is None or sub == gguf.GGUFValueType.ARRAY:
                    writer.add_key_value(key, f.contents(), vtype, sub_type=sub)
                else:
                    writer.add_key_value(key, [_value(f, sub, i) for i in f.data], vtype, sub_type=sub)
            else:
                writer.add_key_value(key, _value(f, vtype, f.data[0]), vtype)
        writer.add_file_type(file_type)

    return add


def plan_tensors(reader: Any, dtype: str) -> list[PlannedTensor]:
    """What to write for each source tensor, in source order; refuses types gguf-py cannot dequantize."""
    import gguf
    from gguf.quants import _type_traits  # the registry of implemented block formats

    float_types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    want = np.float16 if dtype == "f16" else np.float32
    plan: list[PlannedTensor] = []
    for t in reader.tensors:
        qtype = t.tensor_type
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGML order -> numpy order
        if qtype.name in _INT_TYPES:
            plan.append(PlannedTensor(t.name, shape, np.dtype(_INT_TYPES[qtype.name]),
                                      lambda t=t, shape=shape: np.asarray(t.data).reshape(shape)))
            continue
        if qtype not in float_types and qtype not in _type_traits:
            raise UnsupportedArchitectureError(
                f"tensor {t.name} is {qtype.name}, which gguf-py cannot dequantize"
            )
        out = np.float32 if len(shape) == 1 else want
        plan.append(PlannedTensor(
            t.name, shape, np.dtype(out),
            lambda t=t, shape=shape, out=out: gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(
                out, copy=False),
        ))
    return plan


def file_type_for(dtype: str) -> int:
    import gguf

    return int(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
