"""What a reply must look like, said once and compiled for each back end's constrained decoding.

    Constraint(schema, prefix, suffix, repeat, or_text)
        the reply is: ``prefix JSON suffix`` (JSON valid under the JSON Schema ``schema``), or up to
        ``MAX_ITEMS`` such items separated by newlines (``repeat``: e.g. Hermes/Qwen
        ``<tool_call>...</tool_call>`` blocks, one per parallel call), or, with ``or_text``, free text
        that cannot be mistaken for one (it starts with neither whitespace nor an item's first character)
    to_gbnf(c)   llama.cpp grammar (GBNF) for llama-cpp-python's ``LlamaGrammar``; the JSON part comes
                 from its port of llama.cpp's json-schema-to-grammar (``json_schema_to_gbnf``)
    to_lark(c)   llguidance's Lark dialect for ONNX Runtime GenAI's ``set_guidance("lark_grammar", ...)``;
                 the JSON part is llguidance's ``%json`` (with compact separators unless the schema says,
                 and objects closed to unlisted keys as llama.cpp's converter reads them: ``closed``)

Both grammars accept the same language (up to the two JSON compilers' whitespace rules), so a request
is constrained alike on either engine. Pure: strings in, strings out; nothing is loaded here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_ITEMS = 8  # repeated items at most (parallel tool calls), as a JSON array of calls is bounded too


def _items() -> str:
    """``item`` followed by at most MAX_ITEMS - 1 more, each after a newline: nested optionals, which
    GBNF and Lark both read (no repetition-range syntax needed)."""
    return "item" + ' ("\\n" item' * (MAX_ITEMS - 1) + ")?" * (MAX_ITEMS - 1)


@dataclass(frozen=True)
class Constraint:
    schema: str  # JSON text of a JSON Schema
    prefix: str = ""
    suffix: str = ""
    repeat: bool = False
    or_text: bool = False

    @property
    def first_char(self) -> str:
        """The character an item starts with ("{" or "[" for bare JSON: both may open a value)."""
        return self.prefix[:1] if self.prefix else "{["


def _gbnf_literal(s: str) -> str:
    return json.dumps(s)  # GBNF string literals take JSON's escapes (\n, \", \\)


def _char_class(chars: str) -> str:
    """A negated character class excluding whitespace and ``chars``, for GBNF and for regexes alike."""
    escaped = "".join("\\" + c if c in "[]\\^-" else c for c in chars)
    return f"[^ \\t\\n\\r{escaped}]"


def to_gbnf(c: Constraint) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    body = json_schema_to_gbnf(c.schema).replace("root ::=", "item-json ::=", 1)
    item = " ".join(x for x in (_gbnf_literal(c.prefix) if c.prefix else "", "item-json",
                                _gbnf_literal(c.suffix) if c.suffix else "") if x)
    items = _items() if c.repeat else "item"
    root = f"root ::= {items} | free-text" if c.or_text else f"root ::= {items}"
    lines = [root, f"item ::= {item}", body]
    if c.or_text:
        lines.append(f"free-text ::= {_char_class(c.first_char)} [^\\x00]*")
    return "\n".join(lines) + "\n"


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that does not say: the
    reading llama.cpp's json-schema-to-grammar gives an absent keyword, applied so llguidance (which
    follows JSON Schema and allows extra keys) constrains to the same language."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("const", "enum", "default", "examples") else closed(v)) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:  # a bare {"type": "object"} stays open
        out["additionalProperties"] = False
    return out


def to_lark(c: Constraint) -> str:
    schema = closed(json.loads(c.schema))
    if isinstance(schema, dict) and "x-guidance" not in schema:
        schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
    item = " ".join(x for x in (json.dumps(c.prefix) if c.prefix else "", "item_json",
                                json.dumps(c.suffix) if c.suffix else "") if x)
    items = _items() if c.repeat else "item"
    lines = [f"start: {items} | free" if c.or_text else f"start: {items}", f"item: {item}",
             f"item_json: %json {json.dumps(schema)}"]
    if c.or_text:
        lines.append(f"free: /{_char_class(c.first_char)}[\\s\\S]*/")
    return "\n".join(lines) + "\n"
