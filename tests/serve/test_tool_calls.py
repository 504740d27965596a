"""Tool calls beyond one per reply: parallel calls (a JSON array, or one ``<tool_call>`` block per call
in Hermes/Qwen-style templates), parsed and streamed as OpenAI returns them; and a stories260K GGUF
whose chat template renders tools natively (a Qwen2.5-style template written for this test), driven
through the official client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from edgegen.runtime.engine import Engine, Token
from edgegen.serve import BackgroundServer, structured
from edgegen.serve.choices import ChoiceEnd, Piece, StreamAssembler
from edgegen.serve.prompt import Prepared, prepare
from edgegen.serve.protocol import ChunkWriter
from edgegen.serve.schemas import ChatCompletionRequest, Tool
from edgegen.serve.structured import ToolSyntax
from tests.serve.kit import KEY, running
from tests.serve.test_chat_template import _gguf_with_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                                       "required": ["tz"], "additionalProperties": False}}}
TOOLS = [Tool.model_validate(WEATHER), Tool.model_validate(TIME)]
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "get_time": TIME["function"]["parameters"]}

# A Qwen2.5-style (Hermes) chat template: tools listed in the system turn inside <tools></tools>, calls
# written as <tool_call> blocks, results returned inside <tool_response>. Written here, after the
# format Qwen2.5's template documents; it is not a copy of that template.
HERMES = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "<tools>"
    "{%- for t in tools %}\n{{ t.function | tojson }}{%- endfor %}\n"
    "</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' %}"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- elif m.tool_calls %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{%- for c in m.tool_calls %}\n<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}<|im_start|>assistant\n"
)


def _request(**kw) -> ChatCompletionRequest:  # type: ignore[no-untyped-def]
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris and the time?"}],
            "tools": [WEATHER, TIME], **kw}
    return ChatCompletionRequest.model_validate(body)


# ---- parsing and streaming, pure ------------------------------------------------------------


def test_parallel_calls_parse_in_both_syntaxes() -> None:
    one = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    two = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]'
    assert [c.name for c in structured.parse_tool_calls(one, TOOLS)] == ["get_weather"]
    calls = structured.parse_tool_calls(two, TOOLS)
    assert [c.name for c in calls] == ["get_weather", "get_time"] and len({c.id for c in calls}) == 2
    assert json.loads(calls[1].arguments) == {"tz": "CET"}
    hermes = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>')
    calls = structured.parse_tool_calls(hermes, TOOLS, ToolSyntax.HERMES)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    for not_calls in ("Paris is sunny.", "[]", '[{"name": "get_weather", "arguments": {}}, {"name": "nope", '
                      '"arguments": {}}]', two[:-9], 'Sure! ' + hermes, hermes[:-5]):
        syntax = ToolSyntax.HERMES if "<tool_call>" in not_calls else ToolSyntax.JSON
        assert structured.parse_tool_calls(not_calls, TOOLS, syntax) is None, not_calls
    assert structured.looks_like_call("  <tool_", ToolSyntax.HERMES) is None
    assert structured.looks_like_call("<tool_call>", ToolSyntax.HERMES) is True
    assert structured.looks_like_call("<b>", ToolSyntax.HERMES) is False
    assert structured.looks_like_call(" [", ToolSyntax.JSON) is True


def test_parallel_calls_stream_as_indexed_deltas() -> None:
    text = ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_time", "arguments": {"tz": "CET"}}]')
    p = Prepared(ids=[1], params=None, tools=TOOLS)  # type: ignore[arg-type]
    asm = StreamAssembler(ChunkWriter(True, "m"), p, engine=None)  # type: ignore[arg-type]
    out: list[bytes] = []
    for i in range(0, len(text), 7):
        out += asm.feed(Piece(0, Token(5, text[i:i + 7])))
    out += asm.feed(ChoiceEnd(0, "stop", 20))
    events = [json.loads(b[len(b"data: "):]) for b in out]
    deltas = [tc for e in events for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]
    assert [d["function"].get("name") for d in deltas if "id" in d] == ["get_weather", "get_time"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(e["choices"][0]["delta"].get("content") for e in events)  # nothing leaked as text


def test_parallel_flag_and_choice_shape_the_constraint() -> None:
    par = structured.tool_constraint(TOOLS, "required")
    single = structured.tool_constraint(TOOLS, "required", parallel=False)
    assert '"array"' in par.schema and '"array"' not in single.schema and not par.or_text
    assert structured.tool_constraint(TOOLS, "auto").or_text
    h = structured.tool_constraint(TOOLS, "auto", syntax=ToolSyntax.HERMES)
    assert h.prefix == "<tool_call>\n" and h.repeat and h.or_text and '"array"' not in h.schema
    assert not structured.tool_constraint(TOOLS, "required", parallel=False, syntax=ToolSyntax.HERMES).repeat


# ---- a model whose template renders tools natively -----------------------------------------------


@pytest.fixture(scope="module")
def hermes_gguf(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gguf_with_template(stories_gguf, tmp_path_factory.mktemp("hermes") / "stories-hermes.gguf", HERMES)


@pytest.fixture(scope="module")
def hermes_server(hermes_gguf: Path) -> Iterator[BackgroundServer]:
    with running(hermes_gguf, n_ctx=512, model_id="stories-hermes") as srv:
        yield srv


def test_template_renders_tools_calls_and_results_natively(hermes_gguf: Path) -> None:
    with Engine(hermes_gguf, n_ctx=512, n_threads=1) as engine:
        p = prepare(engine, _request())
        prompt = engine.detokenize(p.ids)
        assert "<tools>" in prompt and '"name": "get_weather"' in prompt and "You can call these tools" not in prompt
        assert p.syntax is ToolSyntax.HERMES and p.params.constraint.prefix == "<tool_call>\n"
        turn = _request(messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}])
        prompt = engine.detokenize(prepare(engine, turn).ids)
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
        assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in prompt


def _client(srv: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _valid(call) -> None:  # type: ignore[no-untyped-def]
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_native_template_tool_calls_with_the_official_client(hermes_server: BackgroundServer) -> None:
    c = _client(hermes_server)
    ask = [{"role": "user", "content": "What is the weather in Paris, and the time?"}]
    for seed in range(4):  # one <tool_call> block each: the grammar then allows only the end
        kw = dict(model="stories-hermes", messages=ask, tools=[WEATHER, TIME], tool_choice="required",
                  parallel_tool_calls=False, seed=seed, temperature=1.0, max_tokens=160)
        choice = c.chat.completions.create(**kw).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        _valid(call)
        streamed: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in c.chat.completions.create(stream=True, **kw):
            for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
                entry = streamed.setdefault(tc.index, {"name": "", "arguments": ""})
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
        assert finish == "tool_calls" and list(streamed) == [0]
        assert streamed[0]["name"] == call.function.name
        assert json.loads(streamed[0]["arguments"]) == json.loads(call.function.arguments)
    # parallel (the default): blocks follow one another; a reply is complete calls, or cut by max_tokens
    for seed in range(3):
        choice = c.chat.completions.create(model="stories-hermes", messages=ask, tools=[WEATHER, TIME],
                                           tool_choice="required", seed=seed, temperature=1.0,
                                           max_tokens=160).choices[0]
        if choice.finish_reason == "tool_calls":
            for call in choice.message.tool_calls:
                _valid(call)
        else:
            assert choice.finish_reason == "length" and choice.message.tool_calls is None
            assert choice.message.content.startswith("<tool_call>")


# A Llama-3.1-style template: tools rendered by the template, calls written as bare JSON (no tags)
JSON_TOOLS = ("{%- if tools %}Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
              "{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")


@pytest.fixture(scope="module")
def json_tools_server(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    gguf = _gguf_with_template(stories_gguf, tmp_path_factory.mktemp("jsontools") / "stories-json.gguf", JSON_TOOLS)
    with running(gguf, n_ctx=512, model_id="stories-json") as srv:
        yield srv


def test_parallel_calls_come_back_as_several_tool_calls(json_tools_server: BackgroundServer) -> None:
    """JSON syntax: some seeds reply with an array of calls, which becomes several tool_calls."""
    c = _client(json_tools_server)
    seen = []
    for seed in range(8):  # the array holds at most 8 calls: about 360 tokens of this tokenizer
        choice = c.chat.completions.create(
            model="stories-json", messages=[{"role": "user", "content": "Weather and time?"}], tools=[WEATHER, TIME],
            tool_choice="required", seed=seed, temperature=1.0, max_tokens=460).choices[0]
        if choice.finish_reason == "tool_calls":
            for call in choice.message.tool_calls:
                _valid(call)
            seen.append(len(choice.message.tool_calls))
    assert seen and max(seen) >= 2, seen


# ---- tools on /v1/responses ----------------------------------------------------------------------

R_WEATHER = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
R_TIME = {"type": "function", "name": "get_time", "parameters": TIME["function"]["parameters"]}


def test_responses_api_function_calls_streamed_and_not(json_tools_server: BackgroundServer) -> None:
    c = _client(json_tools_server)
    kw = dict(model="stories-json", input="Weather in Paris?", tools=[R_WEATHER, R_TIME], tool_choice="required",
              parallel_tool_calls=False, temperature=0, max_output_tokens=120)
    r = c.responses.create(**kw)
    assert r.status == "completed" and len(r.output) == 1
    (item,) = r.output
    assert item.type == "function_call" and item.call_id.startswith("call_") and item.name in SCHEMAS
    jsonschema.validate(json.loads(item.arguments), SCHEMAS[item.name])
    assert [t.name for t in r.tools] == ["get_weather", "get_time"]
    events = list(c.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds  # the call was held back, never sent as text
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(item.arguments)
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert added[0].type == "function_call" and added[0].name == item.name
    assert kinds[-1] == "response.completed" and events[-1].response.output[0].name == item.name
    # named choice
    named = c.responses.create(**{**kw, "tool_choice": {"type": "function", "name": "get_time"}})
    assert named.output[0].name == "get_time"


def test_responses_events_for_parallel_calls() -> None:
    from edgegen.serve.responses import ResponseEvents, ResponsesRequest

    req = ResponsesRequest.model_validate({"input": "x", "tools": [R_WEATHER, R_TIME], "stream": True})
    ev = ResponseEvents(req, "m", [Tool.model_validate(WEATHER), Tool.model_validate(TIME)], ToolSyntax.JSON)
    text = '[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {"tz": "UTC"}}]'
    out = ev.start()
    for i in range(0, len(text), 5):
        out += ev.feed(Piece(0, Token(3, text[i:i + 5])))
    out += ev.feed(ChoiceEnd(0, "stop", 30)) + ev.end(10, 30)
    events = [json.loads(b.split(b"data: ", 1)[1]) for b in out]
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" not in kinds and "response.content_part.added" not in kinds
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["output_index"] for d in done] == [0, 1]
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed" and final["parallel_tool_calls"] is True
    assert [(o["type"], o["name"]) for o in final["output"]] == [("function_call", "get_weather"),
                                                                  ("function_call", "get_time")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # text that is not a call streams as a message, opened lazily
    ev = ResponseEvents(req, "m", [Tool.model_validate(WEATHER)], ToolSyntax.JSON)
    out = ev.start() + ev.feed(Piece(0, Token(3, "  Sunny"))) + ev.feed(ChoiceEnd(0, "stop", 2)) + ev.end(1, 2)
    kinds = [json.loads(b.split(b"data: ", 1)[1])["type"] for b in out]
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert json.loads(out[-1].split(b"data: ", 1)[1])["response"]["output"][0]["content"][0]["text"] == "  Sunny"


def test_responses_api_call_results_round_trip_and_refusals(json_tools_server: BackgroundServer) -> None:
    c = _client(json_tools_server)
    r = c.responses.create(model="stories-json", tools=[R_WEATHER], tool_choice="none", temperature=0,
                           max_output_tokens=16, input=[
                               {"role": "user", "content": "Weather in Paris?"},
                               {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                                "arguments": '{"city": "Paris"}'},
                               {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}])
    assert r.output[0].type == "message" and r.output_text
    with pytest.raises(openai.BadRequestError, match="not served"):
        c.responses.create(model="stories-json", input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="stories-json", input="hi", tools=[R_WEATHER],
                           tool_choice={"type": "function", "name": "nope"})
