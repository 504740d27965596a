"""The official ``openai`` client on SmolLM2: JSON-schema output parsed by the client, tool calls (streamed
and not), logprobs, ``n`` = 2, and the optional ``model``."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from edgegen.serve import BackgroundServer
from tests.serve.kit import KEY

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                   "required": ["timezone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(srv: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


class Capital(BaseModel):
    country: str
    city: str


def test_parse_with_pydantic_schema(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
    r = parse(model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
              response_format=Capital, temperature=0, max_tokens=48)
    got = r.choices[0].message.parsed
    assert isinstance(got, Capital) and got.city and got.country


def test_tool_call_not_streamed(smol_server: BackgroundServer) -> None:
    r = client(smol_server).chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0,
        max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")


def test_named_tool_choice_forces_that_tool(smol_server: BackgroundServer) -> None:
    r = client(smol_server).chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time" and "timezone" in json.loads(call.function.arguments)


def test_tool_call_streamed_matches_not_streamed(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    kw = dict(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
              max_tokens=64)
    whole = c.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, ids, finish = "", "", set(), None
    for chunk in c.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        for tc in d.tool_calls or ():
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(ids) == 1
    assert name == whole.function.name and json.loads(args) == json.loads(whole.function.arguments)
    # the client's own stream helper accumulates the same call
    with c.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == whole.function.name


def test_tool_result_round_trip(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    call = c.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required",
                                     temperature=0, max_tokens=64).choices[0].message
    msgs = ASK + [call.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": '{"temp": 21}'}]
    r = c.chat.completions.create(model="smollm2", messages=msgs, tools=[WEATHER], tool_choice="none",
                                  temperature=0, max_tokens=24)
    assert r.choices[0].message.content and r.choices[0].message.tool_calls is None


def test_logprobs_and_n(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Name a colour."}],
                                  max_tokens=6, temperature=0.9, seed=3, n=2, logprobs=True, top_logprobs=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    for ch in r.choices:
        lp = ch.logprobs.content
        assert lp and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp)
    comp = c.completions.create(model="smollm2", prompt="The sky is", max_tokens=5, temperature=0, logprobs=3)
    assert len(comp.choices[0].logprobs.tokens) == comp.usage.completion_tokens
    assert all(len(t) == 3 for t in comp.choices[0].logprobs.top_logprobs)


def test_responses_create_streamed_and_not(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    kw = dict(model="smollm2", input="What is the capital of France?", instructions="Answer in one sentence.",
              max_output_tokens=24, temperature=0)
    r = c.responses.create(**kw)
    assert "Paris" in r.output_text and r.usage.input_tokens > 10
    events = list(c.responses.create(stream=True, **kw))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_model_omitted_with_the_client(smol_server: BackgroundServer) -> None:
    r = client(smol_server).chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=2, model=openai.NOT_GIVEN)  # type: ignore[arg-type]
    assert r.parse().model == "smollm2"
