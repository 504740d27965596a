"""A device's private text for federated fine-tuning: read, tokenized by the base model, split.

    local_tokens(folder, model, heldout=0.1, cache_dir=None) -> LocalText(train [N], heldout [M])

The text is what the operator opted in: every ``*.txt`` file of one folder on the device (sorted by
name, joined by blank lines). Tokens come from the base model's own tokenizer (llama.cpp), so the ids
index the GGUF's vocabulary. The held-out part is the *last* ``heldout`` fraction of the tokens (a
contiguous tail, not a random sample: neighbouring windows would leak across a random split). With a
``cache_dir`` the ids are kept as ``.npy`` keyed by the text's and the model's sha256, so the ClientApp
(a fresh process for every Flower message) tokenizes once. The text never leaves this module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidTextError
from edgegen.hub.texts import read_texts

__all__ = ["LocalText", "local_tokens"]


@dataclass(frozen=True)
class LocalText:
    train: np.ndarray  # [N] int64 token ids
    heldout: np.ndarray  # [M] int64 token ids


def _files(folder: Path) -> list[Path]:
    folder = Path(folder)
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise InvalidTextError(f"{folder}: no *.txt files to learn from")
    return files


def _model_key(model: Path) -> str:
    st = Path(model).stat()
    return f"{Path(model).resolve()}:{st.st_size}:{int(st.st_mtime)}"


def local_tokens(folder: Path, model: Path, *, heldout: float = 0.1, cache_dir: Path | None = None) -> LocalText:
    """Tokenize the device's text with ``model``'s tokenizer and split off the held-out tail.

    Raises ``InvalidTextError`` for an empty folder or a text too short to split."""
    text = read_texts(_files(folder))
    key = hashlib.sha256((_model_key(model) + "\0" + text).encode()).hexdigest()[:24]
    cached = Path(cache_dir) / f"tokens-{key}.npy" if cache_dir is not None else None
    if cached is not None and cached.exists():
        ids = np.load(cached)
    else:
        from edgegen.runtime.engine import Engine

        with Engine(Path(model), n_ctx=64, n_threads=1) as eng:
            ids = np.asarray(eng.tokenize(text, add_bos=False, special=False), dtype=np.int64)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, ids)
            os.replace(tmp, cached)
    n_held = int(len(ids) * heldout)
    if n_held < 16 or len(ids) - n_held < 16:
        raise InvalidTextError(f"{folder}: {len(ids)} tokens are too few to split {heldout:.0%} off for evaluation")
    return LocalText(train=ids[:-n_held], heldout=ids[-n_held:])
