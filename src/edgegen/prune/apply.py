"""Applying a prune plan to a GGUF: the kept rows and columns of every tensor, renumbered, atomically.

    write_pruned(reader, plan, out) -> out
    write_weights(reader, out, weights) -> out     same model, new values (the distiller's output)

What each tensor keeps (numpy order, rows first; GGUF names of the ``llama`` family):

    attn_q [H*hd, D]     rows of the kept heads     attn_k, attn_v [Hkv*hd, D]  rows of the kept groups
    attn_output [D, H*hd] columns of the kept heads  ffn_gate, ffn_up [F, D]     rows of the kept channels
    ffn_down [D, F]       columns of kept channels   norms, embeddings, output   unchanged
    (q/k/v biases, when present, follow their rows)

A per-layer plan (``PrunePlan.per_layer``) is written as llama.cpp's ``deci`` architecture: the
source's ``llama.*`` keys become ``deci.*``, feed_forward_length, attention.head_count and
attention.head_count_kv become per-block arrays (llama.cpp's ``get_key_or_arr``; read in
src/llama-model.cpp, run by src/models/deci.cpp), and a block with no KV group left is written with no
attention tensors (deci runs it attention-free: the FFN reads the residual stream directly).

Kept blocks are renumbered 0..n-1 in source order. Metadata is the source's, with block_count,
feed_forward_length, head_count, head_count_kv and key/value_length set to the kept shape (key_length
is written so that n_head * head_dim may differ from n_embd after heads go). Float tensors keep their
type (F32 or F16); quantized sources are dequantized to F32 first (a block format's rows cannot be cut
mid-block). The file goes to a temporary name and is moved over ``out`` only when complete
(``formats.gguf_write``). This module chooses nothing: the plan says what stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import PruneTargetError
from edgegen.formats.dequant import metadata_copier
from edgegen.formats.gguf_write import PlannedTensor, write_gguf
from edgegen.prune.plan import PrunePlan

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
SHAPE_KEYS = ("block_count", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.value_length")
PER_LAYER_ARCH = "deci"
PER_LAYER_SOURCES = ("llama", "mistral")  # deci's graph is llama's: NORM rotary, no q/k/v biases


def _rows(idx: list[int], size: int) -> np.ndarray:
    if not idx:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(i * size, (i + 1) * size) for i in idx])


def slicer(plan: PrunePlan, kept_index: int, part: str) -> Callable[[np.ndarray], np.ndarray]:
    """How tensor ``blk.<layer>.<part>`` of the ``kept_index``-th kept block is cut."""
    hd = plan.source.head_dim
    heads = _rows(plan.heads(kept_index), hd)
    groups = _rows(list(plan.kv_groups[kept_index]), hd)
    ffn = np.asarray(plan.ffn[kept_index])
    if part.startswith("attn_q."):
        return lambda a: a[heads]
    if part.startswith(("attn_k.", "attn_v.")):
        return lambda a: a[groups]
    if part == "attn_output.weight":
        return lambda a: a[:, heads]
    if part.startswith(("ffn_gate.", "ffn_up.")):
        return lambda a: a[ffn]
    if part == "ffn_down.weight":
        return lambda a: a[:, ffn]
    return lambda a: a


def planned_tensors(reader: Any, plan: PrunePlan, weights: Callable[[str], np.ndarray] | None = None
                    ) -> list[PlannedTensor]:
    """The output's tensors in source order (dropped blocks left out); ``weights(name)`` overrides the
    source's values (float32, numpy order: the distiller passes its trained weights this way)."""
    import gguf

    from edgegen.compress.plan import SourceModel

    model = SourceModel(reader)
    new_index = {layer: j for j, layer in enumerate(plan.layers)}
    out = []
    for t in reader.tensors:
        m = _BLOCK.match(t.name)
        name, cut = t.name, (lambda a: a)
        if m:
            layer = int(m.group(1))
            if layer not in new_index:
                continue
            if not plan.kv_groups[new_index[layer]] and m.group(2).startswith("attn_"):
                continue  # an attention-free block keeps none of its attention tensors
            name = f"blk.{new_index[layer]}.{m.group(2)}"
            cut = slicer(plan, new_index[layer], m.group(2))
        dtype = np.float16 if t.tensor_type == gguf.GGMLQuantizationType.F16 else np.float32
        if len(model.shapes[t.name]) < 2:
            dtype = np.float32

        def produce(src: str = t.name, name: str = name, cut=cut, dtype=dtype) -> np.ndarray:  # noqa: ANN001
            if weights is not None:
                return np.ascontiguousarray(weights(name), dtype=dtype)
            return np.ascontiguousarray(cut(model.weight(src)), dtype=dtype)

        shape = cut(np.empty(model.shapes[t.name], dtype=np.bool_)).shape
        out.append(PlannedTensor(name, tuple(shape), np.dtype(dtype), produce))
    return out


def write_pruned(reader: Any, plan: PrunePlan, out: Path,
                 weights: Callable[[str], np.ndarray] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the pruned model to ``out`` (atomically); see the module docstring for what is kept."""
    import gguf

    from edgegen.formats.gguf_file import field_value

    src_arch = str(field_value(reader, "general.architecture", "llama"))
    arch = src_arch
    if plan.per_layer:
        check_per_layer_source(src_arch)
        arch = PER_LAYER_ARCH
    tensors = planned_tensors(reader, plan, weights)
    all_f32 = all(t.dtype == np.float32 for t in tensors)
    file_type = gguf.LlamaFileType.ALL_F32 if all_f32 else gguf.LlamaFileType.MOSTLY_F16
    copy = metadata_copier(reader, int(file_type), skip=frozenset(f"{src_arch}.{k}" for k in SHAPE_KEYS),
                           rename=(f"{src_arch}.", f"{arch}.") if arch != src_arch else None)
    k = plan.kept
    group = plan.source.n_head // plan.source.n_head_kv
    shape_values: tuple[tuple[str, Any], ...] = (
        ("block_count", k.n_layer), ("feed_forward_length", k.n_ff),
        ("attention.head_count", k.n_head), ("attention.head_count_kv", k.n_head_kv))
    if plan.per_layer:
        shape_values = (("block_count", k.n_layer), ("feed_forward_length", list(plan.ffn_widths)),
                        ("attention.head_count", [g * group for g in plan.kv_widths]),
                        ("attention.head_count_kv", list(plan.kv_widths)))

    def add_metadata(writer: Any) -> None:
        copy(writer)
        u32, arr = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.ARRAY
        for key, value in (*shape_values, ("attention.key_length", k.head_dim), ("attention.value_length", k.head_dim)):
            if isinstance(value, list):
                writer.add_key_value(f"{arch}.{key}", [int(v) for v in value], arr, sub_type=u32)
            else:
                writer.add_key_value(f"{arch}.{key}", int(value), u32)

    return write_gguf(out, arch, add_metadata, tensors, progress)


def write_weights(reader: Any, out: Path, weights: Callable[[str], np.ndarray],
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Rewrite the model of ``reader`` with new values (``weights(name)``, float32, numpy order) for
    every tensor, same names, shapes and metadata (any width layout, deci's per-layer ones included):
    what the distiller writes. Float types as in ``write_pruned``."""
    import gguf

    from edgegen.compress.plan import SourceModel
    from edgegen.formats.gguf_file import field_value

    model = SourceModel(reader)
    tensors = []
    for t in reader.tensors:
        shape = tuple(model.shapes[t.name])
        dtype = np.float16 if t.tensor_type == gguf.GGMLQuantizationType.F16 and len(shape) >= 2 else np.float32

        def produce(name: str = t.name, dtype: Any = dtype) -> np.ndarray:
            return np.ascontiguousarray(weights(name), dtype=dtype)

        tensors.append(PlannedTensor(t.name, shape, np.dtype(dtype), produce))
    all_f32 = all(t.dtype == np.float32 for t in tensors)
    file_type = gguf.LlamaFileType.ALL_F32 if all_f32 else gguf.LlamaFileType.MOSTLY_F16
    arch = str(field_value(reader, "general.architecture", "llama"))
    return write_gguf(out, arch, metadata_copier(reader, int(file_type)), tensors, progress)


def check_per_layer_source(arch: str) -> None:
    """PruneTargetError unless per-layer widths can be written for a source of this architecture."""
    if arch not in PER_LAYER_SOURCES:
        raise PruneTargetError(
            f"per-layer widths are written as llama.cpp's deci architecture, which runs llama-family graphs; "
            f"this model is {arch!r}: drop per_layer for a uniform prune")
