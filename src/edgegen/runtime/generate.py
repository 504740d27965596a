"""The one token loop every back end runs, and the values it takes and gives.

    SamplingParams      one call's sampling settings (seed, temperature, top-k/p, min-p, stops, ...)
    Token               one generated token: id, the text it adds, log-probability, alternatives
    StreamStats         filled while a stream runs (token counts, finish reason, TTFT, seed)
    Completion          a finished call (``complete``/``chat``)
    TokenLoop           the base class of ``runtime.engine.Engine`` (llama.cpp) and
                        ``runtime.ort_engine.OrtEngine`` (ONNX Runtime GenAI): ``stream``,
                        ``complete``, ``chat`` and ``chat_stream`` written once over the back end's
                        ``_decode`` (an iterator of sampled ids plus the logits row each came from)
    token_logprobs(row, tok, k) -> (log p(tok), k best (id, logprob), entropy in nats)

What the loop owns, for both back ends: the prompt's fit in the context, the seed (a fresh one per
call when the call names none, so no call's sampling state reaches the next), the token budget, end of
generation (EOG ids, unless ``ignore_eos``), stop strings (``runtime.stops.StopFilter``), UTF-8 pieces
split across tokens, log-probabilities from the raw logits the token was sampled from (before grammar,
top-k/p and temperature, as OpenAI reports them), time to first token, and cancellation: closing the
iterator closes the back end's decoder at once. What a back end owns: turning (tokens, params, seed)
into sampled ids. This module loads no back end and does no I/O.
"""

from __future__ import annotations

import codecs
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgegen.errors import ContextOverflowError
from edgegen.runtime.constraint import Constraint
from edgegen.runtime.stops import StopFilter


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # compute each sampled token's log-probability (costs a softmax per token)
    ignore_eos: bool = False  # benchmarks: keep decoding past end-of-generation tokens
    top_logprobs: int = 0  # also report this many likeliest alternatives per token (implies logprobs)
    grammar: str | None = None  # GBNF text (llama.cpp grammar) the output must match; this call only
    constraint: Constraint | None = None  # JSON (Schema) shape the output must have, any engine; this call only

    @classmethod
    def greedy(cls, max_tokens: int = 256, **kw: Any) -> SamplingParams:
        return cls(max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, **kw)


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the new text this token adds (may be "" while a UTF-8 sequence or stop prefix is pending)
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()  # the likeliest (token id, logprob) pairs, best first
    entropy: float | None = None  # of the distribution it was sampled from, in nats (with logprobs)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    ttft_s: float  # prompt submitted -> first token sampled
    total_s: float
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        gen = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / gen if self.completion_tokens > 1 and gen > 0 else 0.0


@dataclass
class StreamStats:
    """Filled in while a stream runs; read it after the iterator is exhausted or closed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    ttft_s: float | None = None
    total_s: float = 0.0
    token_logprobs: list[float] = field(default_factory=list)
    seed: int | None = None  # the seed this call sampled with (drawn when the call named none)


def default_threads() -> int:
    """Physical cores (psutil), else logical ones, at least 1."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        n = None
    return max(1, n or os.cpu_count() or 1)


def token_logprobs(row: np.ndarray, tok: int, k: int = 0) -> tuple[float, tuple[tuple[int, float], ...], float]:
    """From one logits row [n_vocab]: log p(tok), the ``k`` likeliest (id, logprob) pairs (best first,
    ties by id) and the distribution's entropy in nats. float64 throughout."""
    x = np.asarray(row, dtype=np.float64)
    m = float(x.max())
    logz = m + float(np.log(np.exp(x - m).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        best = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        best = best[np.argsort(-x[best], kind="stable")]
        top = tuple((int(i), float(x[i] - logz)) for i in best)
    logp = x - logz
    entropy = float(-(np.exp(logp) * logp).sum())
    return float(x[tok] - logz), top, entropy


Decoder = tuple[Iterator[int], Callable[[], np.ndarray]]
"""What a back end's ``_decode`` returns: sampled ids (a generator: closing it frees the back end's
state) and a function giving the logits row [n_vocab] the last yielded id was sampled from."""


class TokenLoop:
    """Generation written once. A subclass sets ``n_ctx``, ``_eog`` (end-of-generation ids) and
    ``_seeds`` (where unseeded calls draw a seed), and implements ``tokenize``, ``token_bytes``,
    ``chat_tokens``, ``_empty_prompt`` (the id a call with no prompt starts from) and ``_decode``."""

    n_ctx: int
    _eog: frozenset[int]
    _seeds: random.Random

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, tok: int) -> bytes:
        raise NotImplementedError

    def chat_tokens(self, messages: Sequence[dict[str, Any]]) -> tuple[list[int], tuple[str, ...]]:
        raise NotImplementedError

    def _empty_prompt(self) -> int:
        raise NotImplementedError

    def _check(self, params: SamplingParams) -> None:
        """Refuse what this back end cannot honour (before any work); default: everything is fine."""

    def _decode(self, tokens: list[int], params: SamplingParams, seed: int, budget: int) -> Decoder:
        """Start generating after ``tokens`` (which fit the context) with ``params`` and ``seed``;
        at most ``budget`` ids will be taken."""
        raise NotImplementedError

    def stream(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(),
               stats: StreamStats | None = None) -> Iterator[Token]:
        """Yield tokens as they are sampled. Stops at an end-of-generation id, a stop string,
        ``max_tokens`` or the context end. Raises ``ContextOverflowError`` for a prompt that does not
        fit, and what ``_check`` refuses; closing the iterator stops generation at the next token."""
        stats = stats if stats is not None else StreamStats()
        self._check(params)
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            tokens = [self._empty_prompt()]
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(tokens)} tokens does not fit the context window of {self.n_ctx}")
        stats.prompt_tokens = len(tokens)
        budget = min(params.max_tokens, self.n_ctx - len(tokens))
        # a seed for every call, so a seeded call never fixes the output of the unseeded calls after it
        seed = params.seed if params.seed is not None else self._seeds.randrange(0xFFFFFFFF)
        stats.seed = seed
        want_top = params.top_logprobs
        want_lp = params.logprobs or want_top > 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(params.stop)
        stats.finish_reason = "length"
        t0 = time.perf_counter()
        if budget <= 0:
            stats.total_s = time.perf_counter() - t0
            return
        ids, last_row = self._decode(tokens, params, seed, budget)
        try:
            for tok in ids:
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - t0
                if tok in self._eog and not params.ignore_eos:
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                lp, top, ent = token_logprobs(last_row(), tok, want_top) if want_lp else (None, (), None)
                if lp is not None:
                    stats.token_logprobs.append(lp)
                text = stops.push(decoder.decode(self.token_bytes(tok)))
                if stops.stopped:
                    stats.finish_reason = "stop"
                    if text:
                        yield Token(tok, text, lp, top, ent)
                    break
                yield Token(tok, text, lp, top, ent)
                if stats.completion_tokens >= budget:
                    break
            tail = stops.flush() + decoder.decode(b"", final=True)
            if stops.stopped:
                stats.finish_reason = "stop"
            if tail:
                yield Token(-1, tail)
        finally:
            close = getattr(ids, "close", None)
            if close is not None:
                close()
            stats.total_s = time.perf_counter() - t0

    def complete(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams()) -> Completion:
        stats = StreamStats()
        text = "".join(t.text for t in self.stream(prompt, params, stats))
        return Completion(text=text, prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                          finish_reason=stats.finish_reason or "length", ttft_s=stats.ttft_s or 0.0,
                          total_s=stats.total_s, token_logprobs=stats.token_logprobs)

    def chat(self, messages: Sequence[dict[str, Any]], params: SamplingParams = SamplingParams()) -> Completion:
        tokens, stops = self.chat_tokens(messages)
        return self.complete(tokens, with_stops(params, stops))

    def chat_stream(self, messages: Sequence[dict[str, Any]], params: SamplingParams = SamplingParams(),
                    stats: StreamStats | None = None) -> Iterator[Token]:
        tokens, stops = self.chat_tokens(messages)
        return self.stream(tokens, with_stops(params, stops), stats)


def with_stops(params: SamplingParams, extra: tuple[str, ...]) -> SamplingParams:
    """``params`` with ``extra`` stop strings added (order kept, duplicates dropped)."""
    return replace(params, stop=tuple(dict.fromkeys(params.stop + extra)))
