"""What llama-server / Ollama users expect of a request: ``model`` optional, ``logprobs`` /
``top_logprobs`` on both endpoints (streamed and not), ``n`` > 1 with distinct seeds, CORS for browser
pages on another origin, and no sampling state leaking between HTTP requests."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH, running, sse_events


def _post(srv: BackgroundServer, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=60, **kw)


def test_model_may_be_omitted(stories_server: BackgroundServer) -> None:
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "Once"})):
        r = _post(stories_server, path, {**body, "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "stories"


def _check_entry(e: dict, k: int) -> None:
    assert e["logprob"] <= 0 and bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
    assert len(e["top_logprobs"]) == k
    lps = [t["logprob"] for t in e["top_logprobs"]]
    assert lps == sorted(lps, reverse=True)
    if k:  # the sampled token is never likelier than the likeliest alternative
        assert e["logprob"] <= lps[0] + 1e-9
    assert sum(math.exp(x) for x in lps) <= 1 + 1e-6


def test_chat_logprobs_greedy_token_is_the_top_one(stories_server: BackgroundServer) -> None:
    r = _post(stories_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 8, "temperature": 0,
        "logprobs": True, "top_logprobs": 3})
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"]
    for e in content:
        _check_entry(e, 3)
        assert e["token"] == e["top_logprobs"][0]["token"]  # greedy picks the argmax
        assert abs(e["logprob"] - e["top_logprobs"][0]["logprob"]) < 1e-9
    assert "".join(e["token"] for e in content).startswith(choice["message"]["content"][:5])


def test_logprobs_streamed_equal_non_streamed(stories_server: BackgroundServer) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "logprobs": 2}
    whole = _post(stories_server, "/v1/completions", body).json()["choices"][0]["logprobs"]
    with httpx.stream("POST", stories_server.url + "/v1/completions", json={**body, "stream": True},
                      headers=AUTH, timeout=60) as r:
        events = [e for e in sse_events(r.iter_lines()) if e != "[DONE]"]
    streamed: list[float] = []
    tops: list[dict] = []
    for e in events:
        lp = e["choices"][0]["logprobs"]
        if lp:
            streamed += lp["token_logprobs"]
            tops += lp["top_logprobs"]
    # equal up to float noise: the stream reuses the cached prompt, which re-evaluates its last token alone
    assert streamed == pytest.approx(whole["token_logprobs"], abs=1e-3)
    assert [list(t) for t in tops] == [list(t) for t in whole["top_logprobs"]]
    assert whole["text_offset"] == sorted(whole["text_offset"]) and len(whole["tokens"]) == 10
    assert all(len(t) == 2 for t in whole["top_logprobs"])


def test_chat_logprobs_streamed(stories_server: BackgroundServer) -> None:
    body = {"messages": [{"role": "user", "content": "Once"}], "max_tokens": 6, "temperature": 0,
            "logprobs": True, "top_logprobs": 1, "stream": True}
    with httpx.stream("POST", stories_server.url + "/v1/chat/completions", json=body, headers=AUTH,
                      timeout=60) as r:
        events = [e for e in sse_events(r.iter_lines()) if e != "[DONE]"]
    entries = [x for e in events for x in ((e["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert len(entries) == 6
    for e in entries:
        _check_entry(e, 1)


def test_echo_of_a_prompt_sent_as_token_ids_is_its_text(stories_server: BackgroundServer, stories_gguf: Path) -> None:
    """``echo`` of a prompt given as token ids sends the text they decode to (HF ``decode`` with special
    tokens skipped): with or without the BOS id, SentencePiece's prefix space gone and the prompt's own
    leading space kept; with the same ids as the text prompt, the same answer as the text prompt."""
    from edgegen.runtime.engine import Engine

    with Engine(stories_gguf, n_ctx=64, n_threads=1) as engine:
        cases = [(text, bos, engine.tokenize(text, add_bos=bos))
                 for text in ("Once upon a time", " Once upon a time") for bos in (True, False)]
    body = {"max_tokens": 3, "temperature": 0, "echo": True}
    for text, bos, ids in cases:
        by_ids = _post(stories_server, "/v1/completions", {**body, "prompt": ids}).json()["choices"][0]["text"]
        assert by_ids.startswith(text) and not by_ids.startswith(" " + text), (text, bos, by_ids)
        if bos:  # a text prompt gets the BOS too: the same ids, the same greedy answer
            by_text = _post(stories_server, "/v1/completions", {**body, "prompt": text}).json()["choices"][0]["text"]
            assert by_ids == by_text


def test_n_choices_have_distinct_seeds(stories_server: BackgroundServer) -> None:
    body = {"prompt": "Lily", "max_tokens": 24, "temperature": 1.5, "n": 3, "seed": 5}
    a = _post(stories_server, "/v1/completions", body).json()
    b = _post(stories_server, "/v1/completions", body).json()
    texts = [c["text"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3  # three seeds, three stories
    assert texts == [c["text"] for c in b["choices"]]  # seeded: reproducible choice by choice
    one = _post(stories_server, "/v1/completions", {**body, "n": 1}).json()
    assert one["choices"][0]["text"] == texts[0]  # choice 0 samples with the request's own seed
    assert a["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]  # the prompt counts once
    assert a["usage"]["completion_tokens"] > one["usage"]["completion_tokens"]


def test_n_choices_streamed(stories_server: BackgroundServer) -> None:
    body = {"messages": [{"role": "user", "content": "Once"}], "max_tokens": 5, "temperature": 1.0, "n": 2,
            "seed": 9}
    whole = _post(stories_server, "/v1/chat/completions", body).json()
    with httpx.stream("POST", stories_server.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=AUTH, timeout=60) as r:
        events = [e for e in sse_events(r.iter_lines()) if e != "[DONE]"]
    texts = {0: "", 1: ""}
    finishes = {}
    for e in events:
        c = e["choices"][0]
        texts[c["index"]] += c["delta"].get("content") or ""
        if c["finish_reason"]:
            finishes[c["index"]] = c["finish_reason"]
    assert [texts[0], texts[1]] == [c["message"]["content"] for c in whole["choices"]]
    assert set(finishes) == {0, 1}


def test_unseeded_requests_after_a_seeded_one_differ(stories_server: BackgroundServer) -> None:
    """The field report over HTTP: after one "seed": 42, unseeded requests all returned its text."""
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0}
    seeded = _post(stories_server, "/v1/completions", {**body, "seed": 42}).json()["choices"][0]["text"]
    later = [_post(stories_server, "/v1/completions", body).json()["choices"][0]["text"] for _ in range(4)]
    assert later != [seeded] * 4 and len(set(later)) > 1


def test_cors_preflight_without_key_and_headers_on_answers(stories_gguf: Path) -> None:
    origin = "http://ui.example:3000"
    with running(stories_gguf, n_ctx=128, model_id="stories", cors_origins=(origin,)) as srv:
        pre = httpx.options(srv.url + "/v1/chat/completions", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"}, timeout=10)
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == origin
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = _post(srv, "/v1/completions", {"prompt": "Once", "max_tokens": 2}, headers={"origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "x-edgegen-route" in r.headers["access-control-expose-headers"]
        no_key = httpx.post(srv.url + "/v1/completions", json={"prompt": "x"}, headers={"origin": origin})
        assert no_key.status_code == 401  # CORS opens the door to the browser, not past the key
        other = httpx.options(srv.url + "/v1/completions", headers={
            "origin": "http://evil.example", "access-control-request-method": "POST"}, timeout=10)
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_unless_configured(stories_server: BackgroundServer) -> None:
    r = _post(stories_server, "/v1/completions", {"prompt": "Once", "max_tokens": 2},
              headers={"origin": "http://ui.example"})
    assert "access-control-allow-origin" not in r.headers


def test_responses_api_streamed_and_not(stories_server: BackgroundServer) -> None:
    import openai

    c = openai.OpenAI(base_url=stories_server.url + "/v1", api_key=AUTH["authorization"][7:], max_retries=0)
    kw = dict(input="Once upon a time", instructions="Tell a story.", max_output_tokens=8, temperature=0)
    r = c.responses.create(**kw)
    assert r.object == "response" and r.status == "incomplete" and r.output_text  # 8 tokens: cut short
    assert r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 8
    # the same generation as chat with the instructions as the system message
    chat = _post(stories_server, "/v1/chat/completions", {
        "messages": [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Once upon a time"}],
        "max_tokens": 8, "temperature": 0}).json()
    assert r.output_text == chat["choices"][0]["message"]["content"]
    events = list(c.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert events[-1].response.output_text == r.output_text


def test_responses_api_refuses_what_it_does_not_serve(stories_server: BackgroundServer) -> None:
    for body in ({"input": "hi", "previous_response_id": "resp_1"}, {"input": []},
                 {"input": "hi", "tools": [{"type": "web_search"}]},
                 {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}}},
                 {"input": "hi", "text": {"format": {"type": "yaml"}}}):
        r = _post(stories_server, "/v1/responses", body)
        assert r.status_code == 400, (body, r.text)
