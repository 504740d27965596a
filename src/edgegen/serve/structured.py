"""Constrained output: llama.cpp grammars for ``response_format`` and tool calls, and tool-call parsing.

    response_grammar(fmt)             -> GBNF text or None      (json_object, json_schema, text)
    tool_grammar(tools, choice)       -> GBNF text or None      (a call {"name", "arguments"}, or free text)
    tool_system_prompt(tools)         -> the instructions added when the chat template ignores ``tools``
    parse_tool_call(text, tools)      -> ``ParsedCall`` or None (the reply is a call to one of ``tools``)

JSON Schemas are checked with ``jsonschema`` (a schema that is not one is a 400) and turned into GBNF by
llama-cpp-python's port of llama.cpp's ``json-schema-to-grammar`` (``json_schema_to_gbnf``), whose
whitespace rule is bounded, so a small model cannot stall in an endless run of spaces. The grammar makes
llama.cpp's sampler refuse every token that would leave the language, so even a 135M model's reply
parses; it does not make the reply true, and a reply cut by ``max_tokens`` is still cut (finish
"length").

Tool calls use one wire format for every model whose template has no tool syntax of its own:
``{"name": <tool>, "arguments": {...}}``, one call per reply (``parallel_tool_calls`` is accepted and
yields at most one call). With ``tool_choice`` "auto" the grammar allows that object or free text that
does not start with "{"; "required" or a named tool allows only calls. This module does no I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgegen.errors import InvalidRequestError
from edgegen.serve.schemas import (
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    TextFormat,
    Tool,
)

_FREE_TEXT = 'free-text ::= [^{ \\t\\n] [^\\x00]*'


def check_schema(schema: dict[str, Any], where: str) -> None:
    """Raise ``InvalidRequestError`` unless ``schema`` is a valid JSON Schema (its own metaschema)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"{where} is not a valid JSON Schema: {exc.message}") from exc


def schema_grammar(schema: dict[str, Any], where: str) -> str:
    """GBNF accepting exactly the JSON texts ``schema`` allows (as far as the converter supports)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    check_schema(schema, where)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises ValueError/KeyError/NotImplementedError on what it lacks
        raise InvalidRequestError(f"{where} cannot be turned into a grammar: {exc}") from exc


def response_grammar(fmt: TextFormat | JsonObjectFormat | JsonSchemaFormat | None) -> str | None:
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JsonObjectFormat):
        return schema_grammar(fmt.schema_ or {"type": "object"}, "response_format.schema")
    return schema_grammar(fmt.json_schema.schema_, "response_format.json_schema.schema")


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


def tool_grammar(tools: Sequence[Tool], choice: str | NamedToolChoice | None) -> str | None:
    """GBNF for a reply to a request with ``tools`` (already filtered by ``active_tools``)."""
    if not tools:
        return None
    for t in tools:
        if t.function.parameters is not None:
            check_schema(t.function.parameters, f"tools[{t.function.name}].function.parameters")
    calls = schema_grammar(_call_schema(tools), "tools")
    if choice in ("required",) or isinstance(choice, NamedToolChoice):
        return calls
    # "auto": a call, or free text that cannot be mistaken for one
    renamed = calls.replace("root ::=", "tool-call ::=", 1)
    return f"root ::= tool-call | free-text\n{renamed}\n{_FREE_TEXT}\n"


def tool_system_prompt(tools: Sequence[Tool]) -> str:
    """Instructions for templates without tool syntax: the tools as JSON and the reply's shape."""
    specs = [{"name": t.function.name, "description": t.function.description or "",
              "parameters": t.function.parameters or {"type": "object"}} for t in tools]
    return ("You can call these tools:\n" + json.dumps(specs, ensure_ascii=False) +
            '\nTo call one, reply with only a JSON object {"name": <tool name>, "arguments": {...}}. '
            "Otherwise answer in plain text.")


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tool_call(text: str, tools: Sequence[Tool]) -> ParsedCall | None:
    """The call ``text`` makes, if it is a complete ``{"name", "arguments"}`` object naming one of
    ``tools``; None for plain text (or a call cut short by max_tokens)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        obj = json.loads(stripped)
    except ValueError:
        return None
    names = {t.function.name for t in tools}
    if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(obj.get("arguments"), dict):
        return None
    return ParsedCall(id="call_" + uuid.uuid4().hex[:24], name=obj["name"],
                      arguments=json.dumps(obj["arguments"], ensure_ascii=False))


def looks_like_call(prefix: str) -> bool | None:
    """For streaming: True once the reply visibly starts a call, False once it visibly does not, None
    while only whitespace has arrived."""
    stripped = prefix.lstrip()
    if not stripped:
        return None
    return stripped.startswith("{")
