"""Device-side quality check of a LoRA adapter: does it make the model better on *this* device's text?

    QualityPolicy(text_dir, n_ctx, max_chunks)       where the device's opted-in text is, how much to read
    check_adapter_quality(model, adapter, policy) -> AdapterQuality(ppl_base, ppl, tokens)

Runs in the agent's health step, after the candidate adapter has loaded and generated, on the
inactive slot (the active model keeps serving). The text is the device's held-out tail of the same
folder federated learning reads (``learn.data.local_tokens``: the last 10% of its tokens, never
trained on), scored through llama.cpp with and without the adapter on the same chunks, with
llama-perplexity's chunking (``evaluate.metrics``: BOS first, second half of each chunk scored).
Only the two perplexities and the token count leave the device (in its ``switched`` report), for
the rollout gate ``heldout_ppl_ratio`` (``fleet.rollout``): a worse adapter halts at the canary.
It decides nothing itself. Raises ``InvalidTextError`` when the text is missing or too short.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidTextError

__all__ = ["AdapterQuality", "QualityPolicy", "check_adapter_quality"]


@dataclass(frozen=True)
class QualityPolicy:
    text_dir: Path  # the device's opted-in text (every *.txt of the folder), as for ``edgegen learn``
    n_ctx: int = 128  # tokens per chunk
    max_chunks: int = 4
    n_threads: int | None = 1


@dataclass(frozen=True)
class AdapterQuality:
    ppl_base: float  # perplexity of the base model on the held-out chunks
    ppl: float  # the same with the adapter applied
    tokens: int  # scored tokens (the same ones for both)

    @property
    def ratio(self) -> float:
        return self.ppl / self.ppl_base

    def as_dict(self) -> dict[str, float | int]:
        return {"ppl_base": round(self.ppl_base, 6), "ppl": round(self.ppl, 6), "tokens": self.tokens}


def check_adapter_quality(model: Path, adapter: Path, policy: QualityPolicy) -> AdapterQuality:
    """Perplexity of ``model`` without and with the LoRA ``adapter`` on the device's held-out text."""
    from edgegen.evaluate.metrics import score_chunk
    from edgegen.evaluate.quality import chunk_tokens_of
    from edgegen.learn.data import local_tokens
    from edgegen.runtime.engine import Engine

    held = local_tokens(Path(policy.text_dir), Path(model)).heldout  # [M]
    with Engine(Path(model), n_ctx=policy.n_ctx, n_batch=policy.n_ctx, n_threads=policy.n_threads,
                logits_all=True) as base:
        add_bos = base.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        size = min(policy.n_ctx, base.n_ctx)  # llama.cpp may round its context up; chunks stay as asked
        chunks = chunk_tokens_of([int(t) for t in held], size, policy.max_chunks, base.bos_id if add_bos else None)
        if not chunks:
            raise InvalidTextError(f"{policy.text_dir}: {len(held)} held-out tokens, fewer than one chunk of {size}")
        base_logits = [base.logits(c) for c in chunks]  # each [n_ctx, V]
    nll: list[np.ndarray] = []
    nll_base: list[np.ndarray] = []
    with Engine(Path(model), n_ctx=policy.n_ctx, n_batch=policy.n_ctx, n_threads=policy.n_threads,
                logits_all=True, lora_path=Path(adapter)) as eng:
        for c, ref in zip(chunks, base_logits):
            s = score_chunk(eng.logits(c), ref, c)
            nll.append(s.nll)
            nll_base.append(s.ref_nll)
    a, b = np.concatenate(nll), np.concatenate(nll_base)  # [k]
    return AdapterQuality(ppl_base=float(np.exp(b.mean())), ppl=float(np.exp(a.mean())), tokens=int(a.size))
