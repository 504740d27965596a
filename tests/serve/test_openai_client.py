"""The official ``openai`` client against a real server: chat and completions, streaming and not,
model listing, and its AuthenticationError for a wrong or missing key."""

from __future__ import annotations

import httpx
import openai
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH, KEY


def client(srv: BackgroundServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_non_streaming(smol_server: BackgroundServer) -> None:
    r = client(smol_server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "smollm2"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
    whole = c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    assert finishes == [whole.choices[0].finish_reason]
    assert len({ch.id for ch in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_streaming_and_not(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    whole = c.completions.create(model="m", prompt="The sky is", max_tokens=8, temperature=0, stop=["\n\n"])
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 8
    parts = list(c.completions.create(model="m", prompt="The sky is", max_tokens=8, temperature=0,
                                      stop=["\n\n"], stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_stop_string_is_honoured(smol_server: BackgroundServer) -> None:
    r = client(smol_server).completions.create(model="m", prompt="1, 2, 3, 4,", max_tokens=40,
                                               temperature=0, stop=[" 9"])
    assert r.choices[0].finish_reason == "stop"
    assert "9" not in r.choices[0].text and r.choices[0].text.strip().startswith("5")


def test_seeded_sampling_is_reproducible(smol_server: BackgroundServer) -> None:
    c = client(smol_server)
    kw = dict(model="m", prompt="Once upon a time", max_tokens=12, temperature=1.0, top_p=0.9)
    a = c.completions.create(seed=1234, **kw).choices[0].text
    b = c.completions.create(seed=1234, **kw).choices[0].text
    assert a == b


def test_list_models(smol_server: BackgroundServer) -> None:
    models = client(smol_server).models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    assert models.data[0].created > 0


def test_wrong_key_raises_authentication_error(smol_server: BackgroundServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(smol_server, key="not-the-key").models.list()
    with pytest.raises(openai.AuthenticationError):
        client(smol_server, key="not-the-key").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_missing_key_is_401_but_health_is_open(smol_server: BackgroundServer) -> None:
    r = httpx.post(smol_server.url + "/v1/completions", json={"model": "m", "prompt": "hi"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(smol_server.url + "/metrics").status_code == 401
    assert httpx.get(smol_server.url + "/health").json() == {"status": "ok", "model": "smollm2", "error": None}
    assert httpx.get(smol_server.url + "/metrics", headers=AUTH).status_code == 200
