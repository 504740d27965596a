"""One request's choices: generate ``n`` of them on the engine, assemble them into OpenAI's shapes.

    run_choices(engine, stats, prepared)  -> iterator of ``Piece`` (a token of choice i) and ``ChoiceEnd``
    Assembled(prepared, engine)           -> feed items; ``choices(chat)`` gives the finished choices
    StreamAssembler(writer, ...)          -> feed items; yields the SSE chunks to send, in order

Choices run one after another on the one engine (a device has one context); choice i samples with the
request's seed + i when it has a seed, else with a fresh seed of its own. Logprobs are OpenAI's: for
chat ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``, for completions the legacy
``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``. With tools, a reply that is a call
becomes ``tool_calls`` (finish "tool_calls"), one entry per call (parallel calls); when streaming, a reply
that starts like a call ("{", "[" or ``<tool_call>``) is held back until it ends, then sent as tool-call
deltas, call by call with their index (or as text if it did not parse as calls).
This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgegen.runtime.engine import Engine, StreamStats, Token
from edgegen.serve import protocol, structured
from edgegen.serve.prompt import Prepared


@dataclass(frozen=True)
class Piece:
    index: int
    token: Token


@dataclass(frozen=True)
class ChoiceEnd:
    index: int
    finish_reason: str
    completion_tokens: int


def run_choices(engine: Engine, stats: StreamStats, p: Prepared) -> Iterator[Piece | ChoiceEnd]:
    """Generate ``p.n`` choices in turn; ``stats`` sums their tokens (prompt counted once)."""
    for i in range(p.n):
        s = StreamStats()
        try:
            for tok in engine.stream(p.ids, p.choice_params(i), s):
                yield Piece(i, tok)
        finally:
            stats.prompt_tokens = s.prompt_tokens
            stats.completion_tokens += s.completion_tokens
            stats.token_logprobs.extend(s.token_logprobs)
            stats.finish_reason = s.finish_reason
            stats.seed = s.seed if i == 0 else stats.seed
            if stats.ttft_s is None:
                stats.ttft_s = s.ttft_s
            stats.total_s += s.total_s
        yield ChoiceEnd(i, s.finish_reason or "length", s.completion_tokens)


class _Logprobs:
    """Collects one choice's logprobs in the chat or the legacy completions shape."""

    def __init__(self, engine: Engine, chat: bool) -> None:
        self.engine, self.chat = engine, chat
        self.content: list[dict[str, Any]] = []
        self.offset = 0

    def _tok(self, tid: int) -> tuple[str, bytes]:
        raw = self.engine.token_bytes(tid)
        return raw.decode("utf-8", errors="replace"), raw

    def entry(self, tok: Token) -> dict[str, Any] | None:
        if tok.id < 0 or tok.logprob is None:
            return None
        text, raw = self._tok(tok.id)
        top = []
        for tid, lp in tok.top:
            t, b = self._tok(tid)
            top.append({"token": t, "logprob": lp, "bytes": list(b)})
        return {"token": text, "logprob": tok.logprob, "bytes": list(raw), "top_logprobs": top}

    def add(self, tok: Token) -> dict[str, Any] | None:
        e = self.entry(tok)
        if e is not None:
            self.content.append(e)
        return e

    def shape(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.chat:
            return {"content": entries}
        offsets = []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: _Logprobs | None = None
    finish_reason: str = "length"


class Assembled:
    """The non-streamed answer: feed every item, then read ``choices(chat)``."""

    def __init__(self, p: Prepared, engine: Engine, chat: bool) -> None:
        self.p, self.chat = p, chat
        want = p.top_logprobs is not None
        self._choices = [_Choice([p.echo] if p.echo else [], _Logprobs(engine, chat) if want else None)
                         for _ in range(p.n)]

    def feed(self, item: Piece | ChoiceEnd) -> None:
        c = self._choices[item.index]
        if isinstance(item, ChoiceEnd):
            c.finish_reason = item.finish_reason
            return
        c.text.append(item.token.text)
        if c.logprobs is not None:
            c.logprobs.add(item.token)

    def choices(self) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(self._choices):
            text = "".join(c.text)
            lp = c.logprobs.shape(c.logprobs.content) if c.logprobs is not None else None
            if not self.chat:
                out.append({"index": i, "text": text, "finish_reason": c.finish_reason, "logprobs": lp})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": text}
            reason = c.finish_reason
            calls = structured.parse_tool_calls(text, self.p.tools, self.p.syntax) if self.p.tools else None
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": [c.as_openai() for c in calls]}
                reason = "tool_calls"
            out.append({"index": i, "message": message, "finish_reason": reason, "logprobs": lp})
        return out


class StreamAssembler:
    """The streamed answer: ``feed`` returns the SSE chunks each item releases."""

    def __init__(self, writer: protocol.ChunkWriter, p: Prepared, engine: Engine) -> None:
        self.w, self.p, self.engine = writer, p, engine
        self._lp: _Logprobs | None = None
        self._pending: list[dict[str, Any]] = []  # logprobs of tokens whose text is not sent yet
        self._held: list[str] = []  # text held back while it may be a tool call
        self._mode: bool | None = None  # tools: None undecided, True a call, False text
        self._started: set[int] = set()

    def _begin(self, index: int) -> list[bytes]:
        self._started.add(index)
        self._lp = _Logprobs(self.engine, self.w.chat) if self.p.top_logprobs is not None else None
        self._pending, self._held, self._mode = [], [], None if self.p.tools else False
        out = [self.w.role(index)] if self.w.chat else []
        if self.p.echo:
            out.append(self.w.text(self.p.echo, index))
        return out

    def _text(self, index: int, text: str) -> list[bytes]:
        lp = self._lp.shape(self._pending) if self._lp is not None and self._pending else None
        self._pending = []
        return [self.w.text(text, index, lp)]

    def feed(self, item: Piece | ChoiceEnd) -> list[bytes]:
        out = [] if item.index in self._started else self._begin(item.index)
        if isinstance(item, ChoiceEnd):
            return out + self._end(item)
        tok = item.token
        if self._lp is not None:
            e = self._lp.entry(tok)
            if e is not None:
                self._pending.append(e)
        if not tok.text:
            return out
        if self._mode is None:
            self._held.append(tok.text)
            self._mode = structured.looks_like_call("".join(self._held), self.p.syntax)
            if self._mode is False:
                out += self._text(item.index, "".join(self._held))
                self._held = []
            return out
        if self._mode:
            self._held.append(tok.text)
            return out
        return out + self._text(item.index, tok.text)

    def _end(self, end: ChoiceEnd) -> list[bytes]:
        out: list[bytes] = []
        reason = end.finish_reason
        if self._held:
            text = "".join(self._held)
            calls = structured.parse_tool_calls(text, self.p.tools, self.p.syntax) if self._mode else None
            if calls:
                for k, call in enumerate(calls):
                    out += self.w.tool_call(call.as_openai(), end.index, call_index=k)
                reason = "tool_calls"
            else:
                out += self._text(end.index, text)
        elif self._pending and self._lp is not None:
            out += self._text(end.index, "")
        out.append(self.w.finish(reason, end.index))
        return out
