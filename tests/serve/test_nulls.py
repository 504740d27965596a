"""Field fault: explicit JSON nulls. The official ``openai`` client sends ``"n": null``, ``"stream": null``,
``"echo": null`` when a caller passes ``None``, and the server answered 400. The kind: every optional
field of every request model, at any depth, treats ``null`` as absent; a required one is still a 400.
The fields are found by walking the request models, not listed by hand."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from edgegen.serve import BackgroundServer
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest
from tests.serve.kit import AUTH, running

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

# Valid requests that set every optional member (nested ones included) so the walk reaches them all.
CHAT = {
    "model": "m", "max_tokens": 4, "max_completion_tokens": 4, "temperature": 0.5, "top_p": 0.9, "seed": 3,
    "stop": ["\n\n"], "stream": False, "stream_options": {"include_usage": True}, "n": 1,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "user": "u", "ignore_eos": False,
    "logprobs": True, "top_logprobs": 2,
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "x", "description": "d", "schema": SCHEMA, "strict": True}},
    "parallel_tool_calls": False,
    "messages": [
        {"role": "system", "content": "Be brief.", "name": "s"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}],
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": "Go."},
    ],
}
TOOLS = {
    "tools": [{"type": "function", "function": {"name": "f", "description": "a tool", "parameters": SCHEMA,
                                                "strict": True}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
}
COMPLETION = {
    "model": "m", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "seed": 3,
    "stop": "\n\n", "stream": False, "stream_options": {"include_usage": True}, "n": 1, "echo": True,
    "logprobs": 2, "suffix": "", "presence_penalty": 0.0, "frequency_penalty": 0.0, "user": "u",
    "ignore_eos": False,
}


def _walk(model: type[BaseModel], body: dict[str, Any], path: tuple = ()) -> Iterator[tuple[tuple, bool]]:
    """(path to a member, whether it is required) for every field of ``model`` present in ``body``,
    recursing into nested models (the validated instance says which model a nested dict became)."""
    inst = model.model_validate(body)
    for name, field in type(inst).model_fields.items():
        key = field.alias or name
        if key not in body:
            continue
        yield path + (key,), field.is_required()
        value, raw = getattr(inst, name), body[key]
        if isinstance(value, BaseModel) and isinstance(raw, dict):
            yield from _walk(type(value), raw, path + (key,))
        elif isinstance(value, list) and value and isinstance(raw, list):
            for i, (v, r) in enumerate(zip(value, raw)):
                if isinstance(v, BaseModel) and isinstance(r, dict):
                    yield from _walk(type(v), r, path + (key, i))


def _nulled(body: dict[str, Any], path: tuple) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = None
    return out


def _check(srv: BackgroundServer, url: str, model: type[BaseModel], body: dict[str, Any],
           refused: frozenset[tuple] = frozenset()) -> int:
    """Send ``body`` once per member with that member null; ``refused``: optional members whose absence
    breaks a cross-field rule (a 400 for the rule, not for the null)."""
    seen = 0
    for path, required in _walk(model, body):
        r = httpx.post(srv.url + url, json=_nulled(body, path), headers=AUTH, timeout=60)
        want = 400 if required or path in refused else 200
        assert r.status_code == want, (path, r.status_code, r.text[:300])
        seen += 1
    return seen


def test_every_optional_chat_field_accepts_null(stories_server: BackgroundServer) -> None:
    assert _check(stories_server, "/v1/chat/completions", ChatCompletionRequest, CHAT) > 30


def test_every_optional_tool_field_accepts_null(stories_gguf: Path) -> None:
    body = {**{k: v for k, v in CHAT.items() if k != "response_format"}, **TOOLS, "max_tokens": 40}
    with running(stories_gguf, n_ctx=512, model_id="stories") as srv:  # room for the tools' description
        # without tools, a tool_choice naming one is a 400 (as at OpenAI)
        assert _check(srv, "/v1/chat/completions", ChatCompletionRequest, body, frozenset({("tools",)})) > 30


def test_every_optional_completion_field_accepts_null(stories_server: BackgroundServer) -> None:
    assert _check(stories_server, "/v1/completions", CompletionRequest, COMPLETION) >= len(COMPLETION)


def test_openai_client_none_values(stories_server: BackgroundServer) -> None:
    """The original report: the official client passing None for n, stream, echo."""
    import openai

    c = openai.OpenAI(base_url=stories_server.url + "/v1", api_key=AUTH["authorization"][7:], max_retries=0)
    r = c.completions.create(model="m", prompt="Once", max_tokens=3, n=None, stream=None, echo=None,
                             extra_body={"seed": None})
    assert r.choices[0].text is not None
