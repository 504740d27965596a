"""One ``Constraint``, two compilers: llama.cpp's GBNF and llguidance's Lark must accept the same replies."""

from __future__ import annotations

import json

import pytest

from edgegen.runtime.constraint import MAX_ITEMS, Constraint, closed, to_gbnf, to_lark

CALL = {"type": "object", "properties": {"name": {"const": "f"}, "arguments": {
    "type": "object", "properties": {"x": {"enum": ["a", "bc", 7]}}}}, "required": ["name", "arguments"]}


def test_objects_with_properties_are_closed_as_llama_cpp_reads_them() -> None:
    c = closed({"anyOf": [CALL, {"type": "array", "items": CALL}], "properties": {"k": {"const": {"properties": 1}}}})
    assert c["anyOf"][0]["additionalProperties"] is False
    assert c["anyOf"][0]["properties"]["arguments"]["additionalProperties"] is False
    assert c["anyOf"][1]["items"]["additionalProperties"] is False
    assert c["properties"]["k"]["const"] == {"properties": 1}  # values are data, not schemas
    assert "additionalProperties" not in closed({"type": "object"})  # json_object: any object
    assert closed({"properties": {}, "additionalProperties": True})["additionalProperties"] is True


@pytest.mark.parametrize("c", [
    Constraint(json.dumps(CALL)),
    Constraint(json.dumps(CALL), or_text=True),
    Constraint(json.dumps(CALL), "<tool_call>\n", "\n</tool_call>", repeat=True, or_text=True),
])
def test_both_compilers_state_the_same_shape(c: Constraint) -> None:
    gbnf, lark = to_gbnf(c), to_lark(c)
    assert gbnf.startswith("root ::= item") and lark.startswith("start: item")
    assert ("free-text" in gbnf) == c.or_text == ("free" in lark.split("\n")[0])
    assert ('"<tool_call>\\n"' in gbnf) == bool(c.prefix) == ('"<tool_call>\\n"' in lark)
    assert gbnf.count('("\\n" item') == lark.count('("\\n" item') == (MAX_ITEMS - 1 if c.repeat else 0)
    if c.or_text:  # free text may not open like a call
        excluded = gbnf.split("free-text ::= [^")[1].split(" [^")[0]
        assert all(ch in excluded for ch in ("<" if c.prefix else "{["))


def test_both_engines_obey_one_constraint(tiny_onnx, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime_genai")
    import jsonschema

    from edgegen.runtime.base import open_engine
    from edgegen.runtime.engine import SamplingParams

    c = Constraint(json.dumps(CALL), "<tool_call>\n", "\n</tool_call>")
    several = Constraint(json.dumps(CALL), "<tool_call>\n", "\n</tool_call>", repeat=True)
    for path in (tiny_onnx, tiny_gguf):
        with open_engine(path, n_ctx=128, n_threads=1) as e:
            for seed in range(3):
                r = e.complete("Once upon a time", SamplingParams(max_tokens=80, seed=seed, constraint=c))
                assert r.finish_reason == "stop", (path, r.text)
                assert r.text.startswith("<tool_call>\n") and r.text.endswith("\n</tool_call>"), r.text
                jsonschema.validate(json.loads(r.text[len("<tool_call>\n"):-len("\n</tool_call>")]), closed(CALL))
            r = e.complete("Once upon a time", SamplingParams(max_tokens=120, seed=1, constraint=several))
            assert r.text.startswith("<tool_call>\n") and r.text.count("<tool_call>") <= MAX_ITEMS
