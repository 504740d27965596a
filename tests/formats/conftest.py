"""Fixtures for the converter tests: SmolLM2 dequantized to F32 by us, and SmolLM2 as a real HF folder.

The HF folder is made by transformers itself (it loads a GGUF, un-permuting q/k on the way in) and
``save_pretrained``: an independent route to a real Llama-layout folder with a byte-level BPE
tokenizer. transformers' GGUF loading takes ~1 minute on two busy cores, so the folder is built once
into ``<cache_home>/derived/`` (keyed by the transformers version, written atomically) like the
conftest's other derived artifacts; everything our converter writes goes to tmp dirs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from edgegen.formats.convert import convert_model


@pytest.fixture(scope="session")
def smol_f32(smollm2_q4_1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_model(smollm2_q4_1, tmp_path_factory.mktemp("smol") / "smol-f32.gguf", dtype="f32")


def _build_hf_folder(gguf_path: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it; its weights are
    # plain float32 tensors, so move them into a fresh model of the same config and save that.
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg)
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.save_pretrained(dest)
    tok.save_pretrained(dest)


@pytest.fixture(scope="session")
def smol_hf_dir(smollm2_q4_1: Path, cache_home: Path) -> Path:
    import importlib.metadata
    import importlib.util

    missing = [m for m in ("transformers", "accelerate", "torch") if importlib.util.find_spec(m) is None]
    if missing:  # accelerate: transformers needs it to load a GGUF
        pytest.skip(f"transformers cannot load a GGUF here (missing {', '.join(missing)}); install 'compress'")
    version = importlib.metadata.version("transformers")
    dest = cache_home / "derived" / f"SmolLM2-135M-Instruct-hf-transformers{version}"
    if (dest / "model.safetensors").exists() and (dest / "tokenizer.json").exists():
        return dest  # built by an earlier run (without importing torch this time)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build_hf_folder(smollm2_q4_1, tmp)
    except Exception as exc:  # transformers versions differ in what GGUF loading supports
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"transformers {version} could not turn the GGUF into an HF folder: {exc!r}")
    with contextlib.suppress(OSError):
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
