"""Turn a validated API request into what the engine runs: prompt token ids and sampling parameters.

Runs off the event loop (templates and tokenization of long prompts take milliseconds) but outside
the engine's worker: it only reads the vocabulary and chat template, which llama.cpp allows from
any thread. It also turns ``response_format`` and ``tools`` into a ``Constraint`` (see ``structured``), so an
invalid one is a 400 before any queueing. It decides what the device can serve: a prompt that does
not fit the context raises ``ContextOverflowError`` (the caller answers 400 or forwards upstream)
and a request the engine cannot run raises ``InvalidRequestError``. It does not generate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from edgegen.errors import ChatTemplateError, ContextOverflowError, InvalidRequestError
from edgegen.runtime.engine import Engine, SamplingParams
from edgegen.serve import structured
from edgegen.serve.protocol import sampling_params
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest, Tool

# OpenAI renamed "system" to "developer" for newer models; chat templates know only "system".
_ROLE_ALIASES = {"developer": "system"}
TEMPLATE_HEADER = "x-edgegen-chat-template"  # set when a chat was rendered without the model's template


@dataclass(frozen=True)
class Prepared:
    ids: list[int]
    params: SamplingParams
    echo: str = ""  # text to send before the completion (completions with echo=true)
    n: int = 1  # choices, generated one after another
    top_logprobs: int | None = None  # None: no logprobs; k: logprobs with k alternatives per token
    tools: list[Tool] = field(default_factory=list)  # tools the reply may call (parsed into tool_calls)
    headers: dict[str, str] = field(default_factory=dict)  # response headers that say how it was prepared
    syntax: structured.ToolSyntax = structured.ToolSyntax.JSON  # how the model writes tool calls

    def choice_params(self, index: int) -> SamplingParams:
        """Choice ``index``'s parameters: a seeded request gives choice i the seed + i."""
        if index == 0 or self.params.seed is None:
            return self.params
        return replace(self.params, seed=(self.params.seed + index) & 0xFFFFFFFF)

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


def prepare(engine: Engine, req: ChatCompletionRequest | CompletionRequest,
            base: SamplingParams = SamplingParams()) -> Prepared:
    params = sampling_params(req, engine.n_ctx, base)
    echo = ""
    tools: list[Tool] = []
    syntax = structured.ToolSyntax.JSON
    headers: dict[str, str] = {}
    top = req.top_k_logprobs()
    if top is not None:
        params = replace(params, logprobs=True, top_logprobs=top)
    if isinstance(req, ChatCompletionRequest):
        tools = structured.active_tools(req.tools, req.tool_choice)
        constraint = structured.response_constraint(req.response_format)
        parallel = req.parallel_tool_calls is not False  # OpenAI's default: several calls may come at once
        syntax = structured.tool_syntax(engine.chat_template)
        if tools:
            if constraint is not None:
                raise InvalidRequestError("response_format and tools cannot both constrain one reply")
            constraint = structured.tool_constraint(tools, req.tool_choice, parallel=parallel, syntax=syntax)
        ids, stops = _chat_ids(engine, req, tools, parallel)
        if not engine.chat_template:
            headers[TEMPLATE_HEADER] = "none; fallback: plain transcript (role: content lines)"
        params = replace(params, stop=tuple(dict.fromkeys(params.stop + stops)), constraint=constraint)
    else:
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            ids = _tokenize(engine, prompt, add_bos=True)
            echo = prompt if req.echo else ""
        else:
            bad = [t for t in prompt if not 0 <= t < engine.n_vocab]
            if bad:
                raise InvalidRequestError(
                    f"prompt token id {bad[0]} is outside the vocabulary (0..{engine.n_vocab - 1})")
            ids = list(prompt)
            echo = engine.detokenize(ids) if req.echo and ids else ""
        if not ids:
            ids = [engine.bos_id]
    if len(ids) >= engine.n_ctx:
        raise ContextOverflowError(
            f"this prompt is {len(ids)} tokens and the context window is {engine.n_ctx} tokens")
    return Prepared(ids=ids, params=params, echo=echo, n=req.n, top_logprobs=top, tools=tools, headers=headers,
                    syntax=syntax)


def _chat_ids(engine: Engine, req: ChatCompletionRequest,
              tools: list[Tool], parallel: bool = True) -> tuple[list[int], tuple[str, ...]]:
    native = bool(tools) and "tools" in (engine.chat_template or "")
    messages = [_message(m, native) for m in req.messages]
    if tools and not native:  # the template has no tool syntax: describe the tools in the system message
        note = structured.tool_system_prompt(tools, parallel)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
        else:
            messages.insert(0, {"role": "system", "content": note})
    try:
        prompt, stops = engine.chat_prompt(
            messages, tools=[t.model_dump(exclude_none=True) for t in tools] if native else None)
    except ChatTemplateError:
        raise
    except Exception as exc:  # jinja2 TemplateError/raise_exception: the template refused these messages
        raise InvalidRequestError(f"the model's chat template rejected these messages: {exc}") from exc
    ids = _tokenize(engine, prompt, add_bos=True)
    # The template may already start with the BOS text, which tokenizes to BOS: keep one, not two.
    if len(ids) >= 2 and ids[0] == ids[1] == engine.bos_id:
        ids = ids[1:]
    return ids, stops


def _message(m: Any, native: bool) -> dict[str, Any]:
    """A request message as the template sees it; without native tool syntax a call is its JSON text
    and a tool result a user turn naming the tool call it answers."""
    role = _ROLE_ALIASES.get(m.role, m.role)
    content = m.text()
    if m.tool_calls and not native:
        calls = [{"name": c.function.name, "arguments": _args(c.function.arguments)} for c in m.tool_calls]
        text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)  # the reply's own shape
        content = (content + "\n" if content else "") + text
    if role == "tool" and not native:
        return {"role": "user", "content": f"Result of tool call {m.tool_call_id or ''}: {content}".strip()}
    out: dict[str, Any] = {"role": role, "content": content}
    if native and m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": _args(c.function.arguments)}}
                             for c in m.tool_calls]
    if native and m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _args(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _tokenize(engine: Engine, text: str, *, add_bos: bool) -> list[int]:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError("the prompt is not valid Unicode (lone surrogate)") from exc
    return engine.tokenize(text, add_bos=add_bos)
