"""Measured quality of a model against a reference, each run by its own engine on the same tokens.

``evaluate(model, ref, text)`` tokenizes the text with the reference's tokenizer, cuts it into chunks
(see ``metrics`` for the exact definitions, which are llama-perplexity's), runs both models on every
chunk and reports perplexity, mean KL divergence, top-1 agreement, size and bits per weight.
Models may be GGUF files (llama.cpp) or ONNX Runtime GenAI folders (``runtime.base.open_engine``):
the reference's token ids go to every engine, so one table compares formats and engines alike.
It does not quantize or convert anything.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidTextError, UserInputError
from edgegen.evaluate.metrics import QualityAccumulator, score_chunk
from edgegen.runtime.base import ModelFormat, detect_format, open_engine


@dataclass
class QualityReport:
    model: str
    reference: str
    text: str
    chunk_tokens: int
    file_bytes: int
    ref_file_bytes: int
    bits_per_weight: float
    n_params: int
    n_chunks: int
    n_tokens_scored: int
    ppl: float
    ppl_ref: float
    ln_ppl_ratio: float
    kl_mean: float
    kl_stderr: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    top1_stderr: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Size:
    file_bytes: int
    n_params: int
    bits_per_weight: float


def describe(path: Path) -> _Size:
    """Bytes, parameters and bits per weight of a GGUF file or an ONNX folder (its weights on disk)."""
    if detect_format(path) is ModelFormat.GGUF:
        from edgegen.formats.gguf_file import describe as describe_gguf

        s = describe_gguf(path)
        return _Size(s.file_bytes, s.n_params, s.bits_per_weight)
    from edgegen.plan.facts import model_facts

    f = model_facts(path)
    return _Size(f.weight_bytes, f.n_params, 8 * f.weight_bytes / max(f.n_params, 1))


def read_text(path: Path) -> str:
    from edgegen.hub.texts import read_text_source

    text = read_text_source(path)
    if not text.strip():
        raise InvalidTextError(f"text file is empty: {path}")
    return text


def chunk_tokens_of(tokens: list[int], n_ctx: int, max_chunks: int, bos: int | None) -> list[np.ndarray]:
    """Consecutive chunks of ``n_ctx`` tokens; the first token of each becomes BOS when the model uses one."""
    n_chunks = min(max_chunks, len(tokens) // n_ctx)
    out = []
    for i in range(n_chunks):
        chunk = np.array(tokens[i * n_ctx : (i + 1) * n_ctx], dtype=np.int64)
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def evaluate(
    model_path: Path,
    ref_path: Path,
    text_path: Path,
    *,
    chunk_tokens: int = 512,
    max_chunks: int = 16,
    n_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """Quality of one model against the reference."""
    return evaluate_many([model_path], ref_path, text_path, chunk_tokens=chunk_tokens, max_chunks=max_chunks,
                         n_threads=n_threads, progress=progress)[0]


def evaluate_many(
    model_paths: list[Path],
    ref_path: Path,
    text_path: Path,
    *,
    chunk_tokens: int = 512,
    max_chunks: int = 16,
    n_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[QualityReport]:
    """Quality of several models against one reference; the reference runs once per chunk."""
    if chunk_tokens < 16:
        raise UserInputError(f"chunk size {chunk_tokens} is too small (at least 16 tokens)")
    text = read_text(Path(text_path))
    infos = [describe(Path(p)) for p in model_paths]
    ref_info = describe(Path(ref_path))
    with ExitStack() as stack:
        load = lambda p: stack.enter_context(  # noqa: E731
            open_engine(p, n_ctx=chunk_tokens, n_batch=chunk_tokens, logits_all=True, n_threads=n_threads))
        ref = load(ref_path)
        models = [load(p) for p in model_paths]
        for p, m in zip(model_paths, models):
            if m.n_vocab != ref.n_vocab:
                raise UserInputError(
                    f"{p}: its vocabulary ({m.n_vocab}) differs from the reference's ({ref.n_vocab})")
        tokens = ref.tokenize(text, add_bos=False, special=False)
        add_bos = ref.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        chunks = chunk_tokens_of(tokens, chunk_tokens, max_chunks, ref.bos_id if add_bos else None)
        if not chunks:
            raise InvalidTextError(
                f"{text_path} has {len(tokens)} tokens, fewer than one chunk of {chunk_tokens}"
            )
        accs = [QualityAccumulator() for _ in models]
        for i, chunk in enumerate(chunks):
            ids = chunk.tolist()
            ref_logits = ref.logits(ids)
            for m, acc in zip(models, accs):
                acc.add(score_chunk(m.logits(ids), ref_logits, chunk))
            if progress:
                progress(i + 1, len(chunks))
    reports = []
    for path, info, acc in zip(model_paths, infos, accs):
        reports.append(QualityReport(
            model=str(path),
            reference=str(ref_path),
            text=str(text_path),
            chunk_tokens=chunk_tokens,
            file_bytes=info.file_bytes,
            ref_file_bytes=ref_info.file_bytes,
            bits_per_weight=round(info.bits_per_weight, 4),
            n_params=info.n_params,
            **acc.summary(),  # type: ignore[arg-type]
        ))
    return reports
