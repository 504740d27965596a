"""Constrained output for ``response_format`` and tool calls, and tool-call parsing.

    response_constraint(fmt)               -> ``Constraint`` or None  (json_object, json_schema, text)
    tool_syntax(template)                  -> ToolSyntax: how the model writes calls
    tool_constraint(tools, choice, ...)    -> ``Constraint``: one call or several, or free text
    tool_system_prompt(tools, parallel)    -> the instructions added when the chat template ignores ``tools``
    parse_tool_calls(text, tools, syntax)  -> [``ParsedCall``, ...] or None (the reply is calls to ``tools``)

A ``runtime.constraint.Constraint`` says what the reply must look like; each engine compiles it (GBNF
for llama.cpp, Lark for ONNX Runtime GenAI's llguidance), so structured output and tools work the same
on both. JSON Schemas are checked with ``jsonschema`` (a schema that is not one is a 400) and must be
one llama.cpp's json-schema-to-grammar can compile (else a 400 naming why). The constraint makes the
sampler refuse every token that would leave the language, so even a 135M model's reply parses; it does
not make the reply true, and a reply cut by ``max_tokens`` is still cut (finish "length").

Tool calls, in the model's own syntax where its chat template has one:
    ToolSyntax.JSON     (templates without tool syntax, and Llama-3.1-style JSON ones) one call
                        ``{"name": <tool>, "arguments": {...}}``, or several as a JSON array of them
    ToolSyntax.HERMES   (templates that write ``<tool_call>``: Qwen2.5/Qwen3, Hermes, SmolLM3) one
                        ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`` block per call
Several calls in one reply (OpenAI's parallel tool calls) unless ``parallel_tool_calls`` is false. With
``tool_choice`` "auto" the constraint also allows free text that cannot be mistaken for a call;
"required" or a named tool allows only calls. This module does no I/O.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgegen.errors import InvalidRequestError
from edgegen.runtime.constraint import MAX_ITEMS, Constraint
from edgegen.serve.schemas import (
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    TextFormat,
    Tool,
)


class ToolSyntax(enum.Enum):
    JSON = "json"
    HERMES = "hermes"


def check_schema(schema: dict[str, Any], where: str) -> None:
    """Raise ``InvalidRequestError`` unless ``schema`` is a valid JSON Schema (its own metaschema)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"{where} is not a valid JSON Schema: {exc.message}") from exc


def checked(schema: dict[str, Any], where: str) -> Constraint:
    """A ``Constraint`` for ``schema``, refused with ``InvalidRequestError`` unless ``jsonschema`` accepts
    it and llama.cpp's json-schema-to-grammar compiles it (so both engines can run it)."""
    from edgegen.runtime.constraint import to_gbnf

    check_schema(schema, where)
    c = Constraint(json.dumps(schema))
    try:
        to_gbnf(c)
    except Exception as exc:  # the converter raises ValueError/KeyError/NotImplementedError on what it lacks
        raise InvalidRequestError(f"{where} cannot be turned into a grammar: {exc}") from exc
    return c


def response_constraint(fmt: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> Constraint | None:
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JsonObjectFormat):
        return checked(fmt.schema_ or {"type": "object"}, "response_format.schema")
    return checked(fmt.json_schema.schema_, "response_format.json_schema.schema")


def _call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    calls = [{"type": "object",
              "properties": {"name": {"const": t.function.name},
                             "arguments": t.function.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"oneOf": calls}


def active_tools(tools: Sequence[Tool] | None, choice: str | NamedToolChoice | None) -> list[Tool]:
    """The tools the model may call for this request (none for tool_choice "none")."""
    if not tools or choice == "none":
        return []
    if isinstance(choice, NamedToolChoice):
        return [t for t in tools if t.function.name == choice.function.name]
    return list(tools)


def tool_syntax(template: str | None) -> ToolSyntax:
    """How the model writes calls, read from its chat template (HERMES if it writes ``<tool_call>``)."""
    return ToolSyntax.HERMES if template and "<tool_call>" in template else ToolSyntax.JSON


def tool_constraint(tools: Sequence[Tool], choice: str | NamedToolChoice | None, *, parallel: bool = True,
                    syntax: ToolSyntax = ToolSyntax.JSON) -> Constraint | None:
    """What a reply to a request with ``tools`` (already filtered by ``active_tools``) may be."""
    if not tools:
        return None
    for t in tools:
        if t.function.parameters is not None:
            check_schema(t.function.parameters, f"tools[{t.function.name}].function.parameters")
    call = _call_schema(tools)
    if syntax is ToolSyntax.JSON and parallel and not isinstance(choice, NamedToolChoice):
        call = {"anyOf": [call, {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_ITEMS}]}
    base = checked(call, "tools")
    only_calls = choice == "required" or isinstance(choice, NamedToolChoice)
    if syntax is ToolSyntax.HERMES:
        return replace(base, prefix="<tool_call>\n", suffix="\n</tool_call>",
                       repeat=parallel and not isinstance(choice, NamedToolChoice), or_text=not only_calls)
    return replace(base, or_text=not only_calls)


def tool_system_prompt(tools: Sequence[Tool], parallel: bool = True) -> str:
    """Instructions for templates without tool syntax: the tools as JSON and the reply's shape."""
    specs = [{"name": t.function.name, "description": t.function.description or "",
              "parameters": t.function.parameters or {"type": "object"}} for t in tools]
    several = " To call several at once, reply with a JSON array of such objects." if parallel else ""
    return ("You can call these tools:\n" + json.dumps(specs, ensure_ascii=False) +
            '\nTo call one, reply with only a JSON object {"name": <tool name>, "arguments": {...}}.' + several +
            " Otherwise answer in plain text.")


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _call(obj: Any, names: set[str]) -> ParsedCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(obj.get("arguments"), dict):
        return None
    return ParsedCall(id="call_" + uuid.uuid4().hex[:24], name=obj["name"],
                      arguments=json.dumps(obj["arguments"], ensure_ascii=False))


_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_calls(text: str, tools: Sequence[Tool], syntax: ToolSyntax = ToolSyntax.JSON) -> list[ParsedCall] | None:
    """The calls ``text`` makes, if it is nothing but complete calls to ``tools`` in ``syntax`` (one
    object or an array of them; or ``<tool_call>`` blocks); None for plain text, or calls cut short."""
    names = {t.function.name for t in tools}
    stripped = text.strip()
    if syntax is ToolSyntax.HERMES:
        blocks = _HERMES_BLOCK.findall(stripped)
        if not blocks or _HERMES_BLOCK.sub("", stripped).strip():
            return None
        objs: list[Any] = []
        for b in blocks:
            try:
                objs.append(json.loads(b))
            except ValueError:
                return None
    else:
        if not stripped.startswith(("{", "[")):
            return None
        try:
            obj = json.loads(stripped)
        except ValueError:
            return None
        objs = obj if isinstance(obj, list) else [obj]
    calls = [_call(o, names) for o in objs]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def looks_like_call(prefix: str, syntax: ToolSyntax = ToolSyntax.JSON) -> bool | None:
    """For streaming: True once the reply visibly starts a call, False once it visibly does not, None
    while that is undecided (only whitespace, or a prefix of ``<tool_call>``)."""
    stripped = prefix.lstrip()
    if not stripped:
        return None
    if syntax is ToolSyntax.HERMES:
        tag = "<tool_call>"
        if stripped.startswith(tag):
            return True
        return None if tag.startswith(stripped) else False
    return stripped.startswith(("{", "["))
