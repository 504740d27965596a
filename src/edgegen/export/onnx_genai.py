"""A Hugging Face folder or a GGUF file to an ONNX Runtime GenAI model folder, for the ``ort`` engine.

    export_onnx(src, out, precision) -> OnnxExport

The graph is written by ONNX Runtime GenAI's own model builder (``onnxruntime_genai.models.builder``,
run as a subprocess: it prints freely and holds the whole model in memory), targeting the CPU
execution provider: ``int4``/``int8`` are its weight-only MatMulNBits quantization (block 32,
symmetric, round-to-nearest), ``fp16``/``fp32`` plain weights.

A GGUF source is first loaded by transformers' GGUF support (every tensor dequantized to float32 by
gguf-py) and saved as a Hugging Face folder; its tokenizer is the one transformers rebuilds from the
GGUF metadata, which is all such a file carries. A Hugging Face source keeps its own tokenizer files:
they are copied byte for byte over whatever the builder re-serialised, so the ONNX model tokenizes
exactly as the source does.

End-of-sequence ids: the builder writes its own resolution into ``genai_config.json``. The export
checks it against the source's (config.json and generation_config.json ``eos_token_id``, plus the
tokenizer's ``eos_token``); ids the source names that the builder left out are added back, and the
result records both lists. The folder is built in a temporary sibling and moved into place, so a
failed export leaves nothing at ``out``. Raises ``EngineNotInstalledError`` (builder missing),
``InvalidModelError`` / ``OutputError`` / ``UnsupportedArchitectureError`` (bad input: e.g. a head
size ONNX Runtime's CPU attention cannot run) or ``ConversionError`` (the builder failed).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import (
    ConversionError,
    EngineNotInstalledError,
    InvalidModelError,
    OutputError,
    UnsupportedArchitectureError,
)

log = logging.getLogger(__name__)

# Files that make up a Hugging Face tokenizer; copied verbatim from the source when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
EXPORT_RECORD = "edgegen_export.json"


class Precision(enum.Enum):
    INT4 = "int4"
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


@dataclass
class OnnxExport:
    """What an export wrote: the folder, the precision, and the end-of-sequence check."""

    out: Path
    precision: Precision
    source: str
    source_format: str  # "hf" | "gguf"
    builder_version: str
    source_eos_ids: list[int]
    builder_eos_ids: list[int]
    eos_ids: list[int]  # what genai_config.json holds after the check
    tokenizer_files: list[str] = field(default_factory=list)  # copied verbatim from the source
    onnx_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["precision"] = str(self.out), self.precision.value
        return d


def _builder_version() -> str:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise EngineNotInstalledError(
            "ONNX export needs onnxruntime-genai's model builder: pip install 'edgegen[onnx]'") from exc
    return str(og.__version__)


def gguf_to_hf(src: Path, out: Path) -> Path:
    """A GGUF file dequantized (by transformers + gguf-py) into a float32 Hugging Face folder at ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineNotInstalledError(
            "GGUF export needs torch and transformers: pip install 'edgegen[compress]'") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception as exc:  # transformers raises ValueError/RuntimeError for unsupported GGUFs
        raise ConversionError(f"transformers could not load {src} as a Hugging Face model: {exc}") from exc
    # transformers marks a GGUF-loaded model as "quantized with gguf" and refuses to save it, although
    # its weights are plain float32 tensors by now: drop that mark before saving
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    try:
        model.save_pretrained(out, safe_serialization=True)
    except (ValueError, OSError) as exc:
        raise ConversionError(f"cannot save {src} as a Hugging Face folder: {exc}") from exc
    tok.save_pretrained(out)
    del model
    return out


def source_eos_ids(folder: Path) -> list[int]:
    """End-of-sequence ids the source declares: config.json, generation_config.json, tokenizer eos_token."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        p = folder / name
        if p.is_file():
            v = json.loads(p.read_text()).get("eos_token_id")
            for t in (v if isinstance(v, list) else [v]):
                if isinstance(t, int) and t not in ids:
                    ids.append(t)
    tc, tj = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if tc.is_file() and tj.is_file():
        eos = json.loads(tc.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        for added in json.loads(tj.read_text()).get("added_tokens", []):
            if eos and added.get("content") == eos and added["id"] not in ids:
                ids.append(int(added["id"]))
    return ids


def check_supported(hf_dir: Path) -> None:
    """Refuse, before any work, a model ONNX Runtime GenAI cannot run on CPU: its CPU
    GroupQueryAttention kernel needs a head size that is a multiple of 16 (ORT 1.32 rejects others
    at the first decode: "head_size shall be a multiple of 16")."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    heads = int(cfg.get("num_attention_heads") or 1)
    head = int(cfg.get("head_dim") or int(cfg.get("hidden_size", 0)) // heads)
    if head % 16:
        raise UnsupportedArchitectureError(
            f"{hf_dir}: attention head size {head} is not a multiple of 16, which ONNX Runtime GenAI's CPU "
            "attention kernel requires; run this model with the llama.cpp engine (GGUF)")


def _run_builder(hf_dir: Path, out: Path, precision: Precision, cache: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision.value, "-e", "cpu", "-c", str(cache)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ConversionError(f"ONNX Runtime GenAI's model builder failed (exit {proc.returncode}): "
                              + " | ".join(tail))


def export_onnx(src: Path, out: Path, precision: Precision = Precision.INT4) -> OnnxExport:
    """Export ``src`` (HF folder with config.json, or .gguf file) to an ONNX Runtime GenAI folder ``out``."""
    src, out = Path(src), Path(out)
    version = _builder_version()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} already exists and is not an empty folder")
    if src.is_dir():
        if not (src / "config.json").is_file():
            raise InvalidModelError(f"{src} has no config.json: not a Hugging Face model folder")
        fmt = "hf"
    elif src.is_file():
        with src.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidModelError(f"{src} is neither a GGUF file nor a Hugging Face folder")
        fmt = "gguf"
    else:
        raise InvalidModelError(f"{src} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        work = Path(tmp)
        hf_dir = gguf_to_hf(src, work / "hf") if fmt == "gguf" else src
        check_supported(hf_dir)
        build = work / "onnx"
        _run_builder(hf_dir, build, precision, work / "cache")
        copied = [n for n in TOKENIZER_FILES if (hf_dir / n).is_file()]
        for name in copied:
            shutil.copyfile(hf_dir / name, build / name)
        if fmt == "gguf":
            copied = []  # rebuilt by transformers from the GGUF metadata, not original files
        cfg_path = build / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        written = cfg["model"].get("eos_token_id")
        builder_eos = [int(t) for t in (written if isinstance(written, list) else [written]) if t is not None]
        want = source_eos_ids(hf_dir)
        final = builder_eos + [t for t in want if t not in builder_eos]
        if final != builder_eos:
            log.warning("builder's eos ids %s miss the source's %s: writing %s", builder_eos, want, final)
            cfg["model"]["eos_token_id"] = final
            cfg_path.write_text(json.dumps(cfg, indent=4))
        result = OnnxExport(out=out, precision=precision, source=str(src), source_format=fmt,
                            builder_version=version, source_eos_ids=want, builder_eos_ids=builder_eos,
                            eos_ids=final, tokenizer_files=copied,
                            onnx_bytes=sum(p.stat().st_size for p in build.iterdir() if p.is_file()))
        (build / EXPORT_RECORD).write_text(json.dumps(result.to_dict(), indent=2))
        if out.exists():
            out.rmdir()
        os.replace(build, out)
    return result
