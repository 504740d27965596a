"""The teacher's top-k next-token distribution, computed once per sequence and cached on disk.

    same_tokenizer(student, teacher)            TokenizerMismatchError unless the vocabularies agree
    TeacherCache(folder, teacher, seq_len, k)   .get(i, ids) -> (logprobs [T, k] float32, ids [T, k] int64)

The teacher runs in llama.cpp (``runtime.engine.Engine``, all logits of a sequence at once): the
exact model a user would deploy, on ggml's fast kernels, so caching costs one prefill per sequence.
Only the top ``k`` log-probabilities (log-softmax over the whole vocabulary, at temperature 1) and
their token ids are kept: for SmolLM2 (vocabulary 49,152) k = 64 keeps ~0.3% of the logits, and the
distillation loss renormalises the teacher over them (as the sparse-logit KD of e.g. Raman et al.
2023, arXiv:2305.13311, and MiniLLM-style caches do). Each entry is one ``.npz`` written atomically
(``durable``): a kill leaves either a complete entry or none. The folder's ``cache.json`` names the
teacher (size and hash of its first MiB), ``seq_len`` and ``k``; a cache made for another teacher or
shape is refused rather than mixed in. Nothing here trains.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.durable import atomic_write
from edgegen.errors import TokenizerMismatchError, UserInputError


def same_tokenizer(student: Path, teacher: Path) -> None:
    """Raise TokenizerMismatchError unless both GGUFs carry the same tokenizer model and token list."""
    from edgegen.formats.gguf_file import validate_gguf

    def vocab(path: Path) -> tuple[Any, str]:
        r = validate_gguf(Path(path))
        tokens = r.fields.get("tokenizer.ggml.tokens")
        model = r.fields.get("tokenizer.ggml.model")
        digest = hashlib.sha256()
        if tokens is not None:
            for part in tokens.data:
                digest.update(bytes(tokens.parts[part]))
                digest.update(b"\0")
        return (model.contents() if model is not None else None), digest.hexdigest()

    s_model, s_hash = vocab(student)
    t_model, t_hash = vocab(teacher)
    if (s_model, s_hash) != (t_model, t_hash):
        raise TokenizerMismatchError(
            f"the teacher {teacher} has a different tokenizer from the student {student} "
            f"({t_model} vs {s_model}, token lists {'differ' if s_hash != t_hash else 'agree'}); "
            "distillation compares next-token distributions, so both must share one vocabulary")


def fingerprint(path: Path) -> str:
    """Size and the SHA-256 of the first MiB: enough to tell models apart without hashing gigabytes."""
    with Path(path).open("rb") as f:
        head = f.read(1 << 20)
    return f"{Path(path).stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest log-probabilities of each row of ``logits`` [T, V] and their ids, both [T, k],
    largest first: log-softmax over the whole row, taken only at the top ``k`` (``torch.topk`` and
    ``torch.logsumexp`` on torch's threads; numpy's full log-softmax and argpartition of a 256 x 49,152
    block took ~0.5 s on one core, a sixth of a distillation step on 2 cores)."""
    import torch

    t = torch.from_numpy(logits)
    vals, top = torch.topk(t, k, dim=1)
    vals -= torch.logsumexp(t, dim=1, keepdim=True)
    return vals.numpy(), top.numpy()


class TeacherCache:
    """Top-k teacher log-probabilities per sequence index, on disk under ``folder``."""

    def __init__(self, folder: Path, teacher: Path, seq_len: int, k: int = 64, n_threads: int = 1):
        self.folder, self.teacher = Path(folder), Path(teacher)
        self.seq_len, self.k, self.n_threads = seq_len, k, n_threads
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"teacher": fingerprint(teacher), "seq_len": seq_len, "k": k}
        tag = self.folder / "cache.json"
        if tag.exists():
            if json.loads(tag.read_text()) != meta:
                raise UserInputError(f"{self.folder} caches another teacher or sequence length; use a fresh work dir")
        else:
            atomic_write(tag, json.dumps(meta).encode(), label="teacher-cache")
        self._engine: Any = None
        self.computed = 0  # entries this process computed (the rest came from disk)

    def _path(self, i: int) -> Path:
        return self.folder / f"seq-{i:06d}.npz"

    def get(self, i: int, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(logprobs [T, k] float32, token ids [T, k] int64) of the teacher on sequence ``i`` = ``ids``."""
        path = self._path(i)
        if path.exists():
            with np.load(path) as z:
                if z["ids"].shape[0] == len(ids) and np.array_equal(z["input"], np.asarray(ids)):
                    return z["logprobs"].astype(np.float32), z["ids"].astype(np.int64)
        vals, top = top_logprobs(self._teacher().logits(ids), self.k)
        buf = io.BytesIO()
        np.savez(buf, logprobs=vals.astype(np.float32), ids=top.astype(np.int32), input=np.asarray(ids, np.int32))
        atomic_write(path, buf.getvalue(), label="teacher-cache")
        self.computed += 1
        return vals, top.astype(np.int64)

    def _teacher(self) -> Any:
        if self._engine is None:
            from edgegen.runtime.engine import Engine

            self._engine = Engine(self.teacher, n_ctx=self.seq_len, n_batch=self.seq_len, logits_all=True,
                                  n_threads=self.n_threads)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
