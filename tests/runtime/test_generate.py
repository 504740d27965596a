"""The one token loop (``runtime.generate.TokenLoop``) driven by a scripted back end: what it owns for
both engines (stops, UTF-8 pieces, end of generation, budget, seeds, logprobs, cancellation)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

from edgegen.errors import ContextOverflowError
from edgegen.runtime.generate import SamplingParams, StreamStats, TokenLoop, token_logprobs

EOS = 0
PIECES = {1: b"Hel", 2: b"lo", 3: b" w", 4: "\u00e9".encode()[:1], 5: "\u00e9".encode()[1:], 6: b"orld", 7: b"!"}


class Scripted(TokenLoop):
    """Yields a fixed id sequence; each id's logits row puts 2 nats more on it than on the rest."""

    def __init__(self, script: list[int], n_ctx: int = 64) -> None:
        self.script, self.n_ctx = script, n_ctx
        self._eog = frozenset({EOS})
        self._seeds = random.Random(7)
        self.closed = 0
        self.seeds: list[int] = []

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        return [9] * len(text.split())

    def token_bytes(self, tok: int) -> bytes:
        return PIECES.get(tok, b"")

    def _empty_prompt(self) -> int:
        return 9

    def _decode(self, tokens, params, seed, budget):  # type: ignore[no-untyped-def]
        self.seeds.append(seed)
        current = [0]

        def ids() -> Iterator[int]:
            try:
                for t in self.script:
                    current[0] = t
                    yield t
            finally:
                self.closed += 1

        def row() -> np.ndarray:
            r = np.zeros(10)
            r[current[0]] = 2.0
            return r

        return ids(), row


def test_text_stops_and_utf8_pieces() -> None:
    eng = Scripted([1, 2, 3, 4, 5, 6, 7, EOS, 1])
    st = StreamStats()
    toks = list(eng.stream("a b", SamplingParams(max_tokens=50), st))
    assert "".join(t.text for t in toks) == "Hello w\u00e9orld!"
    assert [t.text for t in toks][3:5] == ["", "\u00e9"]  # half a character waits for its second byte
    assert (st.finish_reason, st.completion_tokens, st.prompt_tokens) == ("stop", 7, 2)
    assert eng.closed == 1
    out = Scripted([1, 2, 3, 6, 7]).complete("a", SamplingParams(stop=("wor",)))
    assert (out.text, out.finish_reason) == ("Hello ", "stop")


def test_budget_ignore_eos_and_context() -> None:
    assert Scripted([1, 2, 3, 6]).complete("a", SamplingParams(max_tokens=2)).text == "Hello"
    out = Scripted([1, EOS, 2]).complete("a", SamplingParams(max_tokens=3, ignore_eos=True))
    assert (out.text, out.completion_tokens, out.finish_reason) == ("Hello", 3, "length")
    eng = Scripted([1, 2, 3], n_ctx=4)
    assert eng.complete("a b", SamplingParams(max_tokens=9)).completion_tokens == 2  # the context's end
    with pytest.raises(ContextOverflowError):
        list(eng.stream("a b c d", SamplingParams()))
    assert Scripted([1]).complete("", SamplingParams(max_tokens=1)).prompt_tokens == 1  # starts from _empty_prompt


def test_closing_the_stream_closes_the_back_end_and_seeds_are_per_call() -> None:
    eng = Scripted([1, 2, 3, 6, 7])
    it = eng.stream("a", SamplingParams(seed=5))
    next(it)
    it.close()
    assert eng.closed == 1
    st = StreamStats()
    list(eng.stream("a", SamplingParams(), st))
    list(eng.stream("a", SamplingParams()))
    assert eng.seeds[0] == 5 and st.seed == eng.seeds[1] and eng.seeds[1] != eng.seeds[2]


def test_logprobs_come_from_the_row_each_token_was_sampled_from() -> None:
    st = StreamStats()
    toks = list(Scripted([1, 3, EOS]).stream("a", SamplingParams(top_logprobs=2), st))
    expected = 2.0 - np.log(np.exp(2.0) + 9)
    assert all(abs(t.logprob - expected) < 1e-12 for t in toks)
    assert toks[1].top[0][0] == 3 and len(toks[1].top) == 2 and toks[0].entropy is not None
    assert st.token_logprobs == [t.logprob for t in toks]
    lp, top, ent = token_logprobs(np.array([0.0, 0.0]), 1, 5)
    assert abs(lp - np.log(0.5)) < 1e-12 and abs(ent - np.log(2)) < 1e-12 and [i for i, _ in top] == [0, 1]
