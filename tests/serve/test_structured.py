"""Structured output: ``response_format`` json_object / json_schema constrain generation with a llama.cpp
grammar, so every reply parses and validates against its schema (jsonschema); an invalid
``response_format`` is a 400, never silently ignored."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH

SCHEMAS = {
    "object": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                "age": {"type": "integer", "minimum": 0, "maximum": 150}},
               "required": ["name", "age"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
             "required": ["colour"]},
    "array": {"type": "object", "properties": {"cities": {"type": "array", "items": {"type": "string",
                                                                                     "maxLength": 16},
                                                          "minItems": 1, "maxItems": 3}},
              "required": ["cities"]},
    "nested": {"type": "object", "properties": {
        "capital": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "country": {"type": "string", "maxLength": 20}},
                    "required": ["city", "country"]},
        "confident": {"type": "boolean"}}, "required": ["capital", "confident"]},
    "number_and_optional": {"type": "object", "properties": {"temperature_c": {"type": "number"},
                                                             "note": {"type": "string", "maxLength": 10}},
                            "required": ["temperature_c"]},
}
PROMPTS = {
    "object": "Invent a person. Reply in JSON with name and age.",
    "enum": "Which colour is the sky? Reply in JSON.",
    "array": "Name two cities in France, in JSON.",
    "nested": "What is the capital of France? Reply in JSON.",
    "number_and_optional": "How warm is a summer day in Paris, in Celsius? Reply in JSON.",
}


def _chat(srv: BackgroundServer, body: dict) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_replies_validate(smol_server: BackgroundServer, name: str) -> None:
    schema = SCHEMAS[name]
    r = _chat(smol_server, {"messages": [{"role": "user", "content": PROMPTS[name]}], "temperature": 0,
                            "max_tokens": 96, "response_format": {"type": "json_schema",
                                                                  "json_schema": {"name": name, "schema": schema}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


@pytest.mark.slow
def test_json_object_reply_is_an_object(smol_server: BackgroundServer) -> None:
    r = _chat(smol_server, {"messages": [{"role": "user", "content": "Describe Paris in JSON."}], "temperature": 0,
                            "max_tokens": 96, "response_format": {"type": "json_object"}})
    text = r.json()["choices"][0]["message"]["content"]
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still the start of an object
        assert text.lstrip().startswith("{")


def test_grammar_constrains_even_a_tiny_model(stories_server: BackgroundServer) -> None:
    """stories260K never writes JSON by itself; under the grammar its reply validates."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    for seed in range(3):
        r = _chat(stories_server, {"messages": [{"role": "user", "content": "Once upon a time"}], "seed": seed,
                                   "temperature": 1.0, "max_tokens": 40,
                                   "response_format": {"type": "json_schema",
                                                       "json_schema": {"name": "t", "schema": schema}}})
        assert r.status_code == 200, r.text
        jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)


@pytest.mark.parametrize("fmt", [
    {"type": "xml"},
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "a"}}},
    {"type": "json_object", "schema": {"minLength": "long"}},
    "json",
    {},
])
def test_invalid_response_format_is_400(stories_server: BackgroundServer, fmt: object) -> None:
    r = _chat(stories_server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                               "response_format": fmt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_text_format_is_plain(stories_server: BackgroundServer) -> None:
    r = _chat(stories_server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                               "response_format": {"type": "text"}})
    assert r.status_code == 200
