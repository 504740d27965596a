"""Prompt-lookup drafts for speculative decoding: propose the tokens that followed the last n-gram
the last time it appeared in the context.

llama-cpp-python calls a draft model with every token so far and evaluates whatever it proposes in
one batch, keeping the prefix the model agrees with. Each proposal costs a batch evaluation, so a
draft that guesses on every step (as ``LlamaPromptLookupDecoding`` does, falling back to 1-gram
matches) makes free-form answers several times slower. ``NgramDraft`` proposes only when the last
``min_ngram`` tokens or more occurred before, which is when the answer is copying its input, and
stays silent otherwise.

Pass an instance as ``Engine(path, draft=NgramDraft())`` (``edgegen serve --lookup-decoding``).
This module does not evaluate or sample anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from llama_cpp.llama_speculative import LlamaDraftModel


class NgramDraft(LlamaDraftModel):
    def __init__(self, *, min_ngram: int = 3, max_ngram: int = 5, num_pred_tokens: int = 10,
                 window: int = 4096) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.min_ngram, self.max_ngram = min_ngram, max_ngram
        self.num_pred_tokens, self.window = num_pred_tokens, window

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        ids = np.asarray(input_ids[-self.window:])
        n = ids.shape[0]
        for size in range(min(self.max_ngram, n - 1), self.min_ngram - 1, -1):
            tail = ids[n - size:]
            # Candidate starts: positions whose token equals the n-gram's first, before the tail itself.
            starts = np.flatnonzero(ids[: n - size] == tail[0])
            for start in starts[::-1]:  # the most recent occurrence predicts best
                if np.array_equal(ids[start:start + size], tail):
                    follow = ids[start + size:start + size + self.num_pred_tokens]
                    if follow.size:
                        return follow.astype(np.intc)
        return np.empty(0, dtype=np.intc)
