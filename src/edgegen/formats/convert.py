"""``convert_model``: a Hugging Face decoder-only model folder, or a quantized GGUF, to an F16/F32 GGUF.

    convert_model(src, out, dtype="f16", progress=None, bad_template=BadTemplate.REFUSE) -> out

``src`` a folder (config.json + *.safetensors + tokenizer files): the weights are mapped onto
llama.cpp's tensor names (``hf_arch``: llama, mistral, qwen2, qwen3, gemma3, phi3), the tokenizer exported
(``tokenizer``: SentencePiece or byte-level BPE) with its special tokens and chat template; the
folder's name becomes ``general.name`` (adjusted by ``tokenizer.gguf_model_name``, since llama.cpp
reads Phi-3's token stripping off the name). 2-D
weights are written in ``dtype``, 1-D tensors (norms, biases) stay F32. Tied embeddings are left
tied (no ``output.weight``: llama.cpp reuses ``token_embd``).

``src`` a GGUF file: every tensor dequantized with gguf-py's reference code, metadata carried over
(``dequant``). The result is the full-precision reference the quantizers are compared against.

Errors (all ``UserInputError`` subclasses, one sentence each): a missing ``src`` ->
ModelNotFoundError; a folder without config.json, a truncated or non-GGUF file -> InvalidModelError;
an architecture or tokenizer we do not map -> UnsupportedArchitectureError; an output that is a
directory, under a read-only folder, or the source itself -> OutputError; a chat template that does not
compile -> ChatTemplateError, unless ``bad_template=BadTemplate.DROP``, which leaves it out with a
logged warning (the model then chats through a plain transcript). The output is written
atomically (``gguf_write``): a failed conversion never leaves a file at ``out``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ChatTemplateError, InvalidModelError, ModelNotFoundError, OutputError, UserInputError
from edgegen.formats import dequant, hf_arch, tokenizer
from edgegen.formats.chat_template import BadTemplate, template_error
from edgegen.formats.gguf_file import field_value, validate_gguf
from edgegen.formats.gguf_write import PlannedTensor, write_gguf
from edgegen.formats.hf_folder import FLOAT_DTYPES, index_tensors, read_json

__all__ = ["convert_model", "DTYPES", "BadTemplate"]
log = logging.getLogger(__name__)

DTYPES = ("f16", "f32")
Progress = Callable[[int, int], None]


def convert_model(src: Path, out: Path, *, dtype: str = "f16", progress: Progress | None = None,
                  bad_template: BadTemplate = BadTemplate.REFUSE) -> Path:
    """Convert ``src`` (HF folder or GGUF file) to an F16/F32 GGUF at ``out``; returns ``out``."""
    if dtype not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelNotFoundError(f"model not found: {src}")
    if out.is_dir():  # checked early; missing folders are only created once the source has been read
        raise OutputError(f"output {out} is a directory; give a file name such as {out / 'model.gguf'}")
    if out.exists() and out.resolve() == src.resolve():
        raise OutputError(f"the output {out} is the source itself; choose another file name")
    if src.is_dir():
        return _convert_hf_folder(src, out, dtype, progress, bad_template)
    return _dequantize_gguf(src, out, dtype, progress, bad_template)


def _template_ok(src: Path, template: Any, policy: BadTemplate) -> bool:
    """True to keep ``template``; False to drop it; raises ``ChatTemplateError`` to refuse."""
    err = template_error(template)
    if err is None:
        return True
    if policy is BadTemplate.REFUSE:
        raise ChatTemplateError(f"the chat template of {src} does not compile ({err}); convert with "
                                "--bad-template drop to leave it out")
    log.warning("dropped the chat template of %s, which does not compile (%s)", src, err)
    return False


# ---- GGUF -> F16/F32 GGUF ----------------------------------------------------------------------


def cached_reference(src: Path, home: Path, dtype: str = "f16") -> Path:
    """``src`` (a quantized GGUF) dequantized once into ``home/derived/<name>.<DTYPE>.gguf`` and reused.

    The name drops the source's last suffix (``SmolLM2-135M-Instruct.Q4_1.gguf`` gives
    ``SmolLM2-135M-Instruct.F16.gguf``); the write is atomic, so a present file is a complete one.
    """
    src = Path(src)
    out = Path(home) / "derived" / f"{Path(src.stem).stem}.{dtype.upper()}.gguf"
    if not out.exists():
        convert_model(src, out, dtype=dtype)
    return out


def _dequantize_gguf(src: Path, out: Path, dtype: str, progress: Progress | None,
                     bad_template: BadTemplate = BadTemplate.REFUSE) -> Path:
    reader = validate_gguf(src)  # the reader it opened: the file is parsed once
    arch = field_value(reader, "general.architecture")
    if not arch:
        raise InvalidModelError(f"{src} has no general.architecture; it is not a model GGUF")
    plan = dequant.plan_tensors(reader, dtype)
    skip = frozenset(k for k in reader.fields if k.startswith("tokenizer.chat_template")
                     and not _template_ok(src, field_value(reader, k), bad_template))
    add_metadata = dequant.metadata_copier(reader, dequant.file_type_for(dtype), skip)
    return write_gguf(out, str(arch), add_metadata, plan, progress)


# ---- Hugging Face folder -> GGUF ---------------------------------------------------------------


def _order(name: str) -> tuple[int, int, str]:
    """token_embd first, then blocks in order, then the output head (the order llama.cpp writes)."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith(("token_embd", "rope_freqs")) else 2, 0, name)


def _check_shape(name: str, shape: tuple[int, ...], hp: hf_arch.HParams) -> None:
    want = hf_arch.expected_shapes(hp).get(name.split(".", 2)[-1] if name.startswith("blk.") else name)
    if want is not None and shape != want:
        raise InvalidModelError(f"tensor {name} has shape {shape}; config.json implies {want}")


def _convert_hf_folder(src: Path, out: Path, dtype: str, progress: Progress | None,
                       bad_template: BadTemplate = BadTemplate.REFUSE) -> Path:
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise InvalidModelError(f"{src} has no config.json, so it is not a Hugging Face model folder")
    cfg = read_json(cfg_path)
    hp = hf_arch.parse_config(cfg)
    refs = index_tensors(src)
    embd = refs.get("model.embed_tokens.weight")
    if embd is None or len(embd.shape) != 2:
        raise InvalidModelError(f"{src} has no 2-D model.embed_tokens.weight tensor")
    hp = dataclasses.replace(hp, vocab_size=embd.shape[0])  # the embedding rows are the truth
    vocab = tokenizer.load_vocab(src, cfg, hp.vocab_size)
    if vocab.chat_template and not _template_ok(src, vocab.chat_template, bad_template):
        vocab.chat_template = None

    want = np.float16 if dtype == "f16" else np.float32
    plan: list[PlannedTensor] = []
    for hf_name, ref in refs.items():
        name = hf_arch.gguf_name(hf_name, hp)
        if name is None:
            continue
        if ref.dtype not in FLOAT_DTYPES:
            raise InvalidModelError(f"tensor {hf_name} is {ref.dtype}; only float weights can be converted")
        _check_shape(name, ref.shape, hp)
        out_dtype = np.float32 if len(ref.shape) == 1 else want
        plan.append(PlannedTensor(
            name, ref.shape, np.dtype(out_dtype),
            lambda ref=ref, name=name, out_dtype=out_dtype: hf_arch.prepare(
                name, np.asarray(ref.load(), dtype=np.float32), hp).astype(out_dtype, copy=False),
        ))
    names = {t.name for t in plan}
    if "output.weight" not in names and hp.tie_embeddings is False:
        raise InvalidModelError(f"{src} has no lm_head.weight and config.json says embeddings are not tied")
    missing = [n for n in hf_arch.expected_names(hp, "output.weight" in names) if n not in names]
    if missing:
        raise InvalidModelError(f"{src} lacks {len(missing)} tensor(s) llama.cpp needs, e.g. {', '.join(missing[:3])}")
    factors = hf_arch.rope_freq_factors(hp)
    if factors is not None:
        plan.append(PlannedTensor("rope_freqs.weight", factors.shape, np.dtype(np.float32), lambda: factors))
    plan.sort(key=lambda t: _order(t.name))

    def add_metadata(writer: Any) -> None:
        writer.add_type("model")
        writer.add_name(tokenizer.gguf_model_name(src.resolve().name, vocab))
        hf_arch.write_hparams(writer, hp)
        writer.add_file_type(dequant.file_type_for(dtype))
        tokenizer.write_vocab(writer, vocab)

    return write_gguf(out, hp.arch, add_metadata, plan, progress)
