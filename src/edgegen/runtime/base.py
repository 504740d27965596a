"""One engine interface over two back ends, and the factory that picks the back end from the artifact.

    TextEngine          the Protocol every back end satisfies (what run, eval, bench, serve and the
                        agent's health check call); ``runtime.engine.Engine`` (llama.cpp, GGUF) and
                        ``runtime.ort_engine.OrtEngine`` (ONNX Runtime GenAI, ONNX folder) implement it
    EngineKind          llamacpp | ort
    ModelFormat         gguf | onnx
    detect_format(path) what an artifact is, from its bytes and files (never its name)
    resolve_engine(path, engine=None) -> (path, EngineKind), checked without loading
    open_engine(path, engine=None, **options)
                        load ``path`` with the back end that runs its format; ``engine`` forces one
                        and must agree with the format

Options a back end cannot honour raise ``UserInputError`` instead of being silently ignored. Callers
hold a ``TextEngine``: they never test which back end they hold. This module loads no back end at import.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgegen.errors import EngineNotInstalledError, InvalidModelError, ModelNotFoundError, UserInputError


class EngineKind(enum.Enum):
    LLAMACPP = "llamacpp"
    ORT = "ort"


class ModelFormat(enum.Enum):
    GGUF = "gguf"
    ONNX = "onnx"


ENGINE_FOR_FORMAT = {ModelFormat.GGUF: EngineKind.LLAMACPP, ModelFormat.ONNX: EngineKind.ORT}
GENAI_CONFIG = "genai_config.json"


@runtime_checkable
class TextEngine(Protocol):
    """What a loaded model offers. Shapes and units:

    ``n_ctx`` tokens of context; ``n_vocab`` logits per position; ``load_s`` seconds to load;
    ``stream`` yields ``Token``s (id, text piece, optional natural-log probability) and fills a
    ``StreamStats``; closing the iterator cancels generation at the next token; ``logits(tokens)``
    is float32 [len(tokens), n_vocab] from an empty context; ``detokenize(ids)`` is the text Hugging Face
    ``tokenizers`` decodes from ``ids`` with special tokens skipped (``UserInputError`` for an id outside
    the vocabulary). Not thread-safe: one caller at a time.
    Errors: ``ContextOverflowError`` for a prompt that does not fit, ``EngineError`` for back-end failures.
    """

    path: Path
    n_ctx: int
    n_vocab: int
    load_s: float

    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def token_bytes(self, tok: int) -> bytes: ...
    def chat_prompt(self, messages: Sequence[dict[str, Any]], *,
                    tools: Sequence[dict[str, Any]] | None = None) -> tuple[str, tuple[str, ...]]: ...
    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], tuple[str, ...]]: ...
    def stream(self, prompt: str | Sequence[int], params: Any = ..., stats: Any = None) -> Iterator[Any]: ...
    def complete(self, prompt: str | Sequence[int], params: Any = ...) -> Any: ...
    def chat(self, messages: Sequence[dict[str, str]], params: Any = ...) -> Any: ...
    def chat_stream(self, messages: Sequence[dict[str, str]], params: Any = ...,
                    stats: Any = None) -> Iterator[Any]: ...
    def logits(self, tokens: Sequence[int]) -> Any: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> TextEngine: ...
    def __exit__(self, *exc: object) -> None: ...


def detect_format(path: str | Path) -> ModelFormat:
    """GGUF file (by its magic) or ONNX Runtime GenAI folder (by its genai_config.json).

    Raises ``ModelNotFoundError`` if nothing is there and ``InvalidModelError`` naming what is wrong
    otherwise (an ONNX folder without genai_config.json, a Hugging Face folder that needs exporting).
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"{p} does not exist")
    if p.is_dir():
        if (p / GENAI_CONFIG).is_file():
            return ModelFormat.ONNX
        if any(p.glob("*.onnx")):
            raise InvalidModelError(
                f"{p} holds ONNX files but no {GENAI_CONFIG}: ONNX Runtime GenAI needs it "
                f"(export with `edgegen export onnx SRC -o DIR`, which writes it)")
        if (p / "config.json").is_file():
            raise InvalidModelError(
                f"{p} is a Hugging Face folder: convert it (`edgegen convert`) or export it "
                "(`edgegen export onnx`) first")
        raise InvalidModelError(f"{p} is a folder with neither {GENAI_CONFIG} nor a model in it")
    with p.open("rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return ModelFormat.GGUF
    if p.suffix == ".onnx" and (p.parent / GENAI_CONFIG).is_file():
        return ModelFormat.ONNX
    raise InvalidModelError(f"{p} is not a GGUF file (bad magic) nor an ONNX Runtime GenAI folder")


def parse_engine(name: str | EngineKind | None) -> EngineKind | None:
    """``--engine`` value to an ``EngineKind`` (None or "auto": pick from the artifact)."""
    if name is None or isinstance(name, EngineKind):
        return name
    if name == "auto":
        return None
    try:
        return EngineKind(name)
    except ValueError:
        raise UserInputError(f"unknown engine {name!r}: use llamacpp, ort or auto") from None


def resolve_engine(path: str | Path, engine: str | EngineKind | None = None) -> tuple[Path, EngineKind]:
    """The artifact's folder/file and the engine that will run it, checked without loading anything.

    Raises ``InvalidModelError`` / ``ModelNotFoundError`` for a bad artifact, ``UserInputError`` when
    ``engine`` cannot run its format and ``EngineNotInstalledError`` when the back end is missing.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        p = p.parent
    fmt = detect_format(p)
    kind = parse_engine(engine) or ENGINE_FOR_FORMAT[fmt]
    if ENGINE_FOR_FORMAT[fmt] is not kind:
        raise UserInputError(f"the {kind.value} engine cannot run {p} ({fmt.value}); "
                             f"use --engine {ENGINE_FOR_FORMAT[fmt].value} or auto")
    package, hint = {EngineKind.ORT: ("onnxruntime_genai", "pip install 'edgegen[onnx]'"),
                     EngineKind.LLAMACPP: ("llama_cpp", "pip install llama-cpp-python")}[kind]
    import importlib

    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise EngineNotInstalledError(f"the {kind.value} engine is not installed ({package} missing): {hint}") from exc
    return p, kind


def open_engine(path: str | Path, engine: str | EngineKind | None = None, **options: Any) -> TextEngine:
    """Load ``path`` with the engine that runs its format (``resolve_engine``'s checks first).

    ``options``: n_ctx, n_threads (both back ends); n_batch, use_mmap, logits_all, draft, seed_source
    (llama.cpp; the ONNX back end accepts n_batch, use_mmap and logits_all, which it does not need,
    and refuses draft).
    """
    p, kind = resolve_engine(path, engine)
    if kind is EngineKind.ORT:
        from edgegen.runtime.ort_engine import OrtEngine

        return OrtEngine(p, **options)
    from edgegen.runtime.engine import Engine

    return Engine(p, **options)
