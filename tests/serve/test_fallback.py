"""Local first, upstream second, with two real servers on loopback.

The "device" is SmolLM2 with a 256-token context and room for one running plus one waiting request;
the "cloud" is a second edgegen server (stories260K, 512-token context, its own key) that the device
forwards to. Requests beyond the device's context, arriving while its queue is full, waiting past the
TTFT deadline, or arriving while its model is broken are answered by the cloud, and the
``x-edgegen-route`` header says so. Tests that do not start the cloud see the upstream down: the
device still serves what fits and fails the rest with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH, COUNTING, chat_body, free_port, metric, metrics, running, wait_until

CLOUD_KEY = "cloud-key"
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
         "One day, she saw a big, red ball. ") * 9  # ~300 SmolLM2 tokens (device: 256), ~400 stories tokens


@pytest.fixture(scope="module")
def cloud_port() -> int:
    return free_port()


@pytest.fixture
def cloud(stories_gguf: Path, cloud_port: int) -> Iterator[BackgroundServer]:
    with running(stories_gguf, n_ctx=512, port=cloud_port, model_id="cloud", api_keys=(CLOUD_KEY,)) as srv:
        yield srv


@pytest.fixture(scope="module")
def device(smollm2_q4_1: Path, cloud_port: int) -> Iterator[BackgroundServer]:
    with running(smollm2_q4_1, n_ctx=128, max_queue=1, model_id="device",
                 upstream_url=f"http://127.0.0.1:{cloud_port}/v1", upstream_key=CLOUD_KEY) as srv:
        yield srv


def client(srv: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="test-key", max_retries=0, timeout=60)


def occupy(stack: ExitStack, http: httpx.Client, n: int) -> None:
    """Hold ``n`` long local generations open (the first runs, the rest wait)."""
    body = {"model": "m", "prompt": COUNTING, "max_tokens": 300, "ignore_eos": True, "temperature": 0,
            "stream": True}
    for _ in range(n):
        r = stack.enter_context(http.stream("POST", "/v1/completions", json=body))
        assert r.status_code == 200 and r.headers["x-edgegen-route"] == "local"


def test_what_fits_is_answered_by_the_device(device: BackgroundServer, cloud: BackgroundServer) -> None:
    raw = client(device).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4, temperature=0)
    assert raw.headers["x-edgegen-route"] == "local"
    assert raw.parse().model == "device"


@pytest.mark.parametrize("stream", [False, True])
def test_beyond_context_is_answered_by_the_upstream(device: BackgroundServer, cloud: BackgroundServer,
                                                    stream: bool) -> None:
    raw = client(device).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": STORY}], max_tokens=8, temperature=0, stream=stream)
    assert raw.headers["x-edgegen-route"] == "upstream"
    assert raw.headers["x-edgegen-fallback"] == "context_overflow"
    if stream:
        chunks = list(raw.parse())
        assert {c.model for c in chunks} == {"cloud"} and chunks[-1].choices[0].finish_reason
    else:
        answer = raw.parse()
        assert answer.model == "cloud" and answer.usage.prompt_tokens > 256  # more than the device holds


def test_queue_full_is_answered_by_the_upstream(device: BackgroundServer, cloud: BackgroundServer) -> None:
    with httpx.Client(base_url=device.url, headers=AUTH, timeout=60) as http, ExitStack() as held:
        occupy(held, http, 2)  # one running, one waiting: the device's queue is full
        r = http.post("/v1/completions", json={"model": "m", "prompt": "Once upon a time", "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert (r.headers["x-edgegen-route"], r.headers["x-edgegen-fallback"]) == ("upstream", "queue_full")
        assert r.json()["model"] == "cloud"
        with http.stream("POST", "/v1/chat/completions", json=chat_body("Hi", max_tokens=8, stream=True)) as s:
            assert s.headers["x-edgegen-route"] == "upstream" and s.status_code == 200
            lines = [line for line in s.iter_lines() if line]
            assert lines[-1] == "data: [DONE]" and '"model":"cloud"' in lines[0].replace(" ", "")
    assert metric(metrics(device.url), "edgegen_upstream_forwards_total", reason="queue_full") >= 2


def test_ttft_deadline_missed_is_answered_by_the_upstream(device: BackgroundServer,
                                                          cloud: BackgroundServer) -> None:
    server = device.app.state.server
    server.config.ttft_deadline_s = 0.5
    try:
        with httpx.Client(base_url=device.url, headers=AUTH, timeout=60) as http, ExitStack() as held:
            occupy(held, http, 1)  # the engine is busy for ~10 s; the next request waits in the queue
            r = http.post("/v1/completions", json={"model": "m", "prompt": "Once upon a time", "max_tokens": 8})
            assert r.status_code == 200, r.text
            assert (r.headers["x-edgegen-route"], r.headers["x-edgegen-fallback"]) == ("upstream", "ttft_deadline")
    finally:
        server.config.ttft_deadline_s = None


def test_broken_model_is_answered_by_the_upstream(tmp_path: Path, cloud: BackgroundServer) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)  # a header and nothing behind it
    with running(bad, upstream_url=cloud.url + "/v1", upstream_key=CLOUD_KEY, wait=False) as srv:
        wait_until(lambda: httpx.get(srv.url + "/health").json()["status"] == "error", what="load failure")
        assert httpx.get(srv.url + "/health").status_code == 503
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body("Hi", max_tokens=4), headers=AUTH)
        assert r.status_code == 200 and r.headers["x-edgegen-fallback"] == "engine_unavailable"
    with running(bad, wait=False) as srv:  # and with no upstream: a clear 503
        wait_until(lambda: httpx.get(srv.url + "/health").json()["status"] == "error", what="load failure")
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body("Hi", max_tokens=4), headers=AUTH)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]


def test_upstream_down_device_serves_what_fits(device: BackgroundServer) -> None:
    """No cloud running: the device answers what fits; the rest fails clearly and at once."""
    ok = client(device).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi!"}], max_tokens=4, temperature=0)
    assert ok.headers["x-edgegen-route"] == "local" and ok.parse().choices[0].message.content

    with pytest.raises(openai.BadRequestError) as too_long:
        client(device).chat.completions.create(model="m", messages=[{"role": "user", "content": STORY}])
    assert too_long.value.code == "context_length_exceeded"
    assert "upstream is unreachable" in too_long.value.message

    with httpx.Client(base_url=device.url, headers=AUTH, timeout=60) as http, ExitStack() as held:
        occupy(held, http, 2)
        r = http.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 4})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "upstream is unreachable" in r.json()["error"]["message"]
    wait_until(lambda: metric(metrics(device.url), "edgegen_scheduler_running") == 0, what="device idle")

    server = device.app.state.server  # a missed TTFT deadline with the upstream down: the device still answers
    server.config.ttft_deadline_s = 0.2
    try:
        with httpx.Client(base_url=device.url, headers=AUTH, timeout=120) as http, ExitStack() as held:
            body = {"model": "m", "prompt": COUNTING, "max_tokens": 30, "ignore_eos": True, "stream": True}
            held.enter_context(http.stream("POST", "/v1/completions", json=body))
            r = http.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 4})
            assert r.status_code == 200 and r.headers["x-edgegen-route"] == "local"
    finally:
        server.config.ttft_deadline_s = None


def test_upstream_refusing_the_device_key_is_a_502_not_the_clients_401(
        device: BackgroundServer, stories_gguf: Path, cloud_port: int) -> None:
    with running(stories_gguf, n_ctx=512, port=cloud_port, api_keys=("some-other-key",)):
        r = httpx.post(device.url + "/v1/chat/completions", json=chat_body(STORY, max_tokens=4), headers=AUTH)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth"
    assert r.headers["x-edgegen-route"] == "upstream"
