"""LoRA adapters as GGUF files, in the layout llama.cpp loads (``llama_adapter_lora_init``).

    write_lora_gguf(out, architecture, pairs, alpha)   one adapter file: ``general.type = adapter``,
        ``adapter.type = lora``, ``adapter.lora.alpha``, and for each adapted base tensor ``W``
        (numpy shape ``[out, in]``) the pair ``W.lora_a`` ``[r, in]`` and ``W.lora_b`` ``[out, r]``
        (PEFT's ``lora_A`` / ``lora_B``), so the adapted weight is ``W + alpha/r * B @ A``
    random_lora(base, out, rank, targets, scale, seed)  a low-rank adapter with random factors for
        the named projections of a base GGUF (tests and benchmarks: real files llama.cpp loads and
        whose effect on the output is visible)
    adapter_info(path) -> (architecture, alpha, n_pairs); ``InvalidModelError`` if not an adapter

The key names and the tensor naming follow llama.cpp's ``convert_lora_to_gguf.py`` and the checks in
``src/llama-adapter.cpp`` (general.type, adapter.type, adapter.lora.alpha, ``.lora_a``/``.lora_b``).
This module does not train adapters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidModelError
from edgegen.formats.gguf_file import field_value, open_reader
from edgegen.formats.gguf_write import PlannedTensor, write_gguf

__all__ = ["adapter_info", "random_lora", "write_lora_gguf"]

DEFAULT_TARGETS = ("attn_q", "attn_v")


def write_lora_gguf(out: Path, architecture: str, pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    alpha: float, *, name: str = "adapter") -> Path:
    """Write ``pairs`` (base tensor name -> (A [r, in], B [out, r]), float32) as a LoRA GGUF."""
    planned = []
    for base_name, (a, b) in sorted(pairs.items()):
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{base_name}: A {a.shape} and B {b.shape} are not a rank-r pair")
        planned.append(PlannedTensor(f"{base_name}.lora_a", a.shape, np.dtype(np.float32), lambda a=a: a))
        planned.append(PlannedTensor(f"{base_name}.lora_b", b.shape, np.dtype(np.float32), lambda b=b: b))

    def metadata(w) -> None:  # type: ignore[no-untyped-def]
        w.add_type("adapter")
        w.add_name(name)
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", float(alpha))

    return write_gguf(Path(out), architecture, metadata, planned)


def random_lora(base: Path, out: Path, *, rank: int = 4, targets: Sequence[str] = DEFAULT_TARGETS,
                scale: float = 0.5, seed: int = 0, name: str = "adapter") -> Path:
    """A random rank-``rank`` adapter for every ``blk.N.<target>.weight`` of ``base``.

    A ~ N(0, 1/in) and B ~ N(0, scale^2/r) so that ``B @ A`` has entries of about ``scale/sqrt(in)``:
    large enough to change greedy output of a small model, small enough to keep it fluent."""
    reader = open_reader(Path(base))
    arch = str(field_value(reader, "general.architecture", "llama"))
    rng = np.random.default_rng(seed)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in targets and parts[3] == "weight":
            n_in, n_out = int(t.shape[0]), int(t.shape[1])  # gguf-py reports ggml order: ne[0] = in
            a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(rank, n_in)).astype(np.float32)
            b = rng.normal(0.0, scale / np.sqrt(rank), size=(n_out, rank)).astype(np.float32)
            pairs[t.name] = (a, b)
    if not pairs:
        raise InvalidModelError(f"{base} has no tensors named blk.N.{{{','.join(targets)}}}.weight")
    return write_lora_gguf(out, arch, pairs, alpha=float(rank), name=name)


def adapter_info(path: Path) -> tuple[str, float, int]:
    """(architecture, alpha, number of adapted tensors) of a LoRA GGUF; refuses anything else."""
    reader = open_reader(Path(path))
    if field_value(reader, "general.type") != "adapter" or field_value(reader, "adapter.type") != "lora":
        raise InvalidModelError(f"{path} is not a LoRA adapter GGUF (general.type / adapter.type)")
    n = sum(1 for t in reader.tensors if t.name.endswith(".lora_a"))
    return (str(field_value(reader, "general.architecture", "unknown")),
            float(field_value(reader, "adapter.lora.alpha", 0.0)), n)
