"""Errors in OpenAI's JSON shape with the right status: 400 for bad requests and prompts longer than
the context, 404 for unknown routes, 503 + Retry-After when the queue is full."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH, COUNTING, chat_body, metric, metrics, wait_until


def post(srv: BackgroundServer, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, headers=AUTH, timeout=60, **kw)


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


BAD_CHAT = [
    ({"model": "m" * 300, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
    (chat_body("hi", temperature=3), "temperature"),
    (chat_body("hi", n=9), "n"),
    (chat_body("hi", max_tokens=0), "max_tokens"),
    (chat_body("hi", logprobs=True, top_logprobs=21), "top_logprobs"),
    (chat_body("hi", response_format={"type": "yaml"}), "response_format"),
    (chat_body("hi", tool_choice="required"), None),
    (chat_body("hi", stop=[str(i) for i in range(17)]), "stop"),
    (chat_body("hi", stream="sometimes"), "stream"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT)
def test_bad_chat_request_is_400(smol_server: BackgroundServer, body: dict, param: str | None) -> None:
    err = assert_openai_error(post(smol_server, "/v1/chat/completions", body), 400)
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"].startswith(param)


BAD_COMPLETION = [
    {"model": "m", "prompt": ["one", "two"]},
    {"model": "m", "prompt": [1, 2, 10**9]},
    {"model": "m", "prompt": [-5]},
    {"model": "m", "prompt": "hi", "suffix": "bye"},
    {"model": "m", "prompt": "hi", "logprobs": 6},
    {"model": "m", "prompt": {"text": "hi"}},
]


@pytest.mark.parametrize("body", BAD_COMPLETION)
def test_bad_completion_request_is_400(smol_server: BackgroundServer, body: dict) -> None:
    assert_openai_error(post(smol_server, "/v1/completions", body), 400)


def test_malformed_json_is_400(smol_server: BackgroundServer) -> None:
    r = httpx.post(smol_server.url + "/v1/chat/completions", content=b'{"model": "m", "messages": [',
                   headers={**AUTH, "content-type": "application/json"})
    assert_openai_error(r, 400)


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400(smol_server: BackgroundServer, stream: bool) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 80  # ~800 tokens; the context is 512
    err = assert_openai_error(post(smol_server, "/v1/chat/completions", chat_body(long, stream=stream)), 400)
    assert err["code"] == "context_length_exceeded" and "512" in err["message"]
    err = assert_openai_error(post(smol_server, "/v1/completions", {"model": "m", "prompt": long}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    # and the server is still fine afterwards
    assert post(smol_server, "/v1/completions", {"model": "m", "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_unknown_route_and_method_in_openai_shape(smol_server: BackgroundServer) -> None:
    assert_openai_error(httpx.get(smol_server.url + "/v1/nothing", headers=AUTH), 404)
    assert_openai_error(httpx.get(smol_server.url + "/v1/chat/completions", headers=AUTH), 405)


def test_unknown_fields_are_tolerated(smol_server: BackgroundServer) -> None:
    body = chat_body("hi", max_tokens=2, parallel_tool_calls=False, vendor_extension={"x": 1}, user="u1")
    assert post(smol_server, "/v1/chat/completions", body).status_code == 200


def test_queue_full_is_503_with_retry_after(smol_server: BackgroundServer) -> None:
    """Default --max-queue 8: one generating plus eight waiting; the tenth request is refused at once."""
    before = metrics(smol_server.url)
    body = {"model": "m", "prompt": COUNTING, "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.Client(base_url=smol_server.url, headers=AUTH, timeout=60) as client, ExitStack() as held:
        for _ in range(9):
            r = held.enter_context(client.stream("POST", "/v1/completions", json=body))
            assert r.status_code == 200
        wait_until(lambda: metric(metrics(smol_server.url), "edgegen_scheduler_queue_depth") == 8,
                   timeout_s=30, what="eight waiting")
        refused = client.post("/v1/completions", json={**body, "stream": False})
        err = assert_openai_error(refused, 503)
        assert err["code"] == "queue_full"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        refused = client.post("/v1/chat/completions", json=chat_body("hi", stream=True))
        assert_openai_error(refused, 503)
    # closing the nine streams (client gone) stops the running generation and drops the waiting ones
    wait_until(lambda: metric(metrics(smol_server.url), "edgegen_scheduler_running") == 0
               and metric(metrics(smol_server.url), "edgegen_scheduler_queue_depth") == 0,
               timeout_s=30, what="queue drained")
    after = metrics(smol_server.url)
    assert metric(after, "edgegen_generations_cancelled_total") - metric(
        before, "edgegen_generations_cancelled_total") == 9
    assert metric(after, "edgegen_requests_total", status="503") - metric(
        before, "edgegen_requests_total", status="503") == 2
