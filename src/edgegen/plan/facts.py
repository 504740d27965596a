"""What the planner needs to know about a model artifact, read from the artifact itself.

``model_facts(path)`` reads a GGUF file (tensor table and metadata, via gguf-py) or an ONNX Runtime
GenAI folder (``genai_config.json`` and the ONNX graph's initializers, via ``onnx`` without loading
external data) and returns ``ModelFacts``: the weights a decode step reads, grouped by storage type,
the bytes that stay resident, and the K/V cache shape. Nothing is loaded into an engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidModelError
from edgegen.runtime.base import ENGINE_FOR_FORMAT, EngineKind, ModelFormat, detect_format


@dataclass(frozen=True)
class ModelFacts:
    path: str
    format: ModelFormat
    engine: EngineKind
    weight_bytes: int  # bytes of weights in the artifact (file, or ONNX graph + external data)
    weights_read: dict[str, int]  # storage type -> weights every decode step reads
    n_layers: int
    n_kv_heads: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    n_params: int  # every weight of the model, read per token or not (the embedding table included)

    @property
    def kv_elems_per_token(self) -> int:
        """K and V elements one position adds to the cache: 2 x layers x kv heads x head dim."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    @property
    def n_weights_read(self) -> int:
        return sum(self.weights_read.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (what a signed manifest carries, so a control plane can plan without the file)."""
        return {"path": self.path, "format": self.format.value, "engine": self.engine.value,
                "weight_bytes": self.weight_bytes, "weights_read": dict(sorted(self.weights_read.items())),
                "n_layers": self.n_layers, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim,
                "n_vocab": self.n_vocab, "n_ctx_train": self.n_ctx_train, "n_params": self.n_params}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelFacts:
        """The inverse of ``to_dict``; ``InvalidModelError`` naming the field that is missing or wrong."""
        try:
            ints = {k: int(d[k]) for k in ("weight_bytes", "n_layers", "n_kv_heads", "head_dim", "n_vocab",
                                            "n_ctx_train", "n_params")}  # type: ignore[call-overload]
            read = {str(k): int(v) for k, v in dict(d["weights_read"]).items()}  # type: ignore[call-overload]
            return cls(path=str(d.get("path", "")), format=ModelFormat(d["format"]), engine=EngineKind(d["engine"]),
                       weights_read=read, **ints)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"model facts are incomplete or malformed: {exc!r}") from exc

    @property
    def variant(self) -> str:
        """The storage types, largest first: a short label such as ``Q4_K+Q6_K`` or ``INT4+FP32``."""
        ranked = sorted(self.weights_read.items(), key=lambda kv: -kv[1])
        return "+".join(t for t, n in ranked if n >= 0.02 * self.n_weights_read)


def model_facts(path: str | Path) -> ModelFacts:
    """``ModelFacts`` of a GGUF file or ONNX Runtime GenAI folder; ``InvalidModelError`` otherwise."""
    p = Path(path)
    fmt = detect_format(p)
    return _gguf_facts(p) if fmt is ModelFormat.GGUF else _onnx_facts(p)


def _gguf_facts(path: Path) -> ModelFacts:
    from edgegen.formats.gguf_file import context_length, field_value, read_per_token, validate_gguf

    reader = validate_gguf(path)
    arch = str(field_value(reader, "general.architecture", "llama"))
    names = {t.name for t in reader.tensors}
    read: Counter[str] = Counter()
    weight_bytes = n_params = 0
    n_vocab = 0
    for t in reader.tensors:
        weight_bytes += int(t.n_bytes)
        n_params += int(np.prod(t.shape))
        if t.name == "token_embd.weight":
            n_vocab = int(t.shape[-1])
        if len(t.shape) >= 2 and int(np.prod(t.shape)) > 0 and read_per_token(t.name, names):
            read[t.tensor_type.name] += int(np.prod(t.shape))

    def hp(key: str, default: int = 0) -> int:
        v = field_value(reader, f"{arch}.{key}", default)
        return int(v if not isinstance(v, (list, np.ndarray)) else np.max(v))

    n_head = hp("attention.head_count", 1)
    d = hp("embedding_length")
    head_dim = hp("attention.key_length", d // max(n_head, 1))
    return ModelFacts(str(path), ModelFormat.GGUF, EngineKind.LLAMACPP, weight_bytes, dict(read),
                      hp("block_count"), hp("attention.head_count_kv", n_head), head_dim, n_vocab,
                      context_length(reader) or 0, n_params)


_ONNX_TYPES = {1: "FP32", 10: "FP16", 16: "BF16", 3: "INT8", 2: "UINT8"}


def _onnx_facts(folder: Path) -> ModelFacts:
    from edgegen.runtime.ort_engine import read_genai_config

    cfg = read_genai_config(folder)["model"]
    dec = cfg.get("decoder", {})
    onnx_file = folder / dec.get("filename", "model.onnx")
    try:
        import onnx
    except ImportError as exc:
        from edgegen.errors import EngineNotInstalledError

        raise EngineNotInstalledError(
            "reading an ONNX graph needs the onnx package: pip install 'edgegen[onnx]'") from exc
    try:
        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError/OSError on bad files
        raise InvalidModelError(f"{onnx_file} is not a readable ONNX model: {exc}") from exc
    inits = {i.name: i for i in graph.initializer}
    read: Counter[str] = Counter()
    packed: set[str] = set()  # initializers that hold MatMulNBits' packed weights, scales, zero points
    n_params = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            read[f"INT{a.get('bits', 4)}"] += int(a["K"]) * int(a["N"])
            n_params += int(a["K"]) * int(a["N"])
            packed.update(node.input[1:])
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            read[_ONNX_TYPES.get(w.data_type, "FP32")] += int(np.prod(list(w.dims)))
    n_params += sum(int(np.prod(list(i.dims))) for name, i in inits.items() if name not in packed and len(i.dims) >= 2)
    weight_bytes = sum(f.stat().st_size for f in folder.iterdir()
                       if f.is_file() and (f.suffix in (".onnx", ".data") or f.name.endswith(".onnx.data")))
    n_head = int(dec.get("num_attention_heads", 1))
    return ModelFacts(str(folder), ModelFormat.ONNX, ENGINE_FOR_FORMAT[ModelFormat.ONNX], weight_bytes, dict(read),
                      int(dec.get("num_hidden_layers", 0)), int(dec.get("num_key_value_heads", n_head)),
                      int(dec.get("head_size", int(dec.get("hidden_size", 0)) // max(n_head, 1))),
                      int(cfg["vocab_size"]), int(cfg["context_length"]), n_params)
