"""Prompt-lookup drafts: the pure n-gram proposer, and greedy decoding with it giving the same text
as without it on the real (F32) stories model, directly and through the server."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from edgegen.runtime.engine import Engine, SamplingParams
from edgegen.serve import BackgroundServer, ServerConfig, create_app
from edgegen.serve.lookup import NgramDraft
from tests.serve.kit import AUTH, wait_until


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.intc)


def test_drafts_what_followed_the_most_recent_matching_ngram() -> None:
    draft = NgramDraft(min_ngram=3, max_ngram=4, num_pred_tokens=3)
    # 5 6 7 occurred twice before; the most recent is followed by 9 9 1
    out = draft(ids(5, 6, 7, 8, 8, 0, 5, 6, 7, 9, 9, 1, 2, 5, 6, 7))
    assert out.tolist() == [9, 9, 1]


def test_silent_without_a_long_enough_match() -> None:
    draft = NgramDraft(min_ngram=3)
    assert draft(ids(1, 2, 3, 4, 9, 3, 4)).size == 0  # only a 2-gram repeats
    assert draft(ids(1)).size == 0 and draft(ids()).size == 0


def test_greedy_text_is_unchanged_by_lookup_decoding(stories_gguf: Path) -> None:
    prompt = "Lily and Ben went to the park. Lily and Ben went to the"
    with Engine(stories_gguf, n_ctx=256, n_threads=1) as plain, \
            Engine(stories_gguf, n_ctx=256, n_threads=1, draft=NgramDraft()) as lookup:
        want = plain.complete(prompt, SamplingParams.greedy(120))
        got = lookup.complete(prompt, SamplingParams.greedy(120))
    assert got.text == want.text and got.completion_tokens == want.completion_tokens

    app = create_app(stories_gguf, ServerConfig(api_keys=("test-key",)),
                     engine_options={"n_ctx": 256, "n_threads": 1, "draft": NgramDraft()})
    with BackgroundServer(app) as srv:
        wait_until(lambda: httpx.get(srv.url + "/health").status_code == 200, what="ready")
        r = httpx.post(srv.url + "/v1/completions", headers=AUTH, timeout=60,
                       json={"model": "m", "prompt": prompt, "max_tokens": 120, "temperature": 0})
    assert r.json()["choices"][0]["text"] == want.text
