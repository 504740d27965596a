"""Confidence cascade: the device answers unless the mean log-probability of its first k tokens is
below the route's bar; then the upstream answers, the local draft is discarded, and the headers say who
answered and why. Streams decide before their first byte. Device and "cloud" are real servers on
loopback (both stories260K; the cloud names itself "cloud")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgegen.serve import BackgroundServer
from edgegen.serve.cascade import CascadePolicy, Confidence, decide
from tests.serve.kit import AUTH, free_port, running, sse_events

CLOUD_KEY = "cloud-key"
SURE = "Once upon a time, there was a little girl named Lily. She loved to"
UNSURE = "Quantum chromodynamics of 7 zebras in Reykjavik taxes"


def _parse(header: str) -> float:
    return float(header.split(";")[0].split("=")[1])


@pytest.fixture(scope="module")
def cloud(stories_gguf: Path) -> Iterator[BackgroundServer]:
    with running(stories_gguf, n_ctx=256, model_id="cloud", api_keys=(CLOUD_KEY,)) as srv:
        yield srv


def _device(stories_gguf: Path, cloud_url: str, bar: float):
    policy = CascadePolicy(k=6, min_mean_logprob=bar)
    return running(stories_gguf, n_ctx=256, model_id="device", upstream_url=cloud_url + "/v1",
                   upstream_key=CLOUD_KEY, cascade={"chat": policy, "text_completion": policy})


def _complete(srv: BackgroundServer, prompt: str, **kw) -> httpx.Response:
    return httpx.post(srv.url + "/v1/completions", headers=AUTH, timeout=60,
                      json={"prompt": prompt, "max_tokens": 12, "temperature": 0, **kw})


def test_decide_rules() -> None:
    p = CascadePolicy(k=4, min_mean_logprob=-1.0, max_mean_entropy=2.0)
    assert not decide(Confidence.of([-0.1, -0.5], [0.5, 1.0]), p).forward
    assert decide(Confidence.of([-3.0, -0.5], [0.5, 1.0]), p).forward
    assert decide(Confidence.of([-0.1], [4.0]), p).forward
    assert decide(Confidence.of([], []), p).forward
    with pytest.raises(ValueError):
        CascadePolicy(min_mean_logprob=None, max_mean_entropy=None)


def test_routes_by_confidence(stories_gguf: Path, cloud: BackgroundServer) -> None:
    # first, with a bar nobody falls below, read each prompt's confidence from the header
    with _device(stories_gguf, cloud.url, -1e9) as dev:
        sure, unsure = (_complete(dev, p) for p in (SURE, UNSURE))
        assert sure.headers["x-edgegen-route"] == unsure.headers["x-edgegen-route"] == "local"
        lp_sure = _parse(sure.headers["x-edgegen-confidence"])
        lp_unsure = _parse(unsure.headers["x-edgegen-confidence"])
        local_text = sure.json()["choices"][0]["text"]
    assert lp_sure > lp_unsure + 0.2, (lp_sure, lp_unsure)
    with _device(stories_gguf, cloud.url, (lp_sure + lp_unsure) / 2) as dev:
        a = _complete(dev, SURE)
        assert a.headers["x-edgegen-route"] == "local" and a.json()["model"] == "device"
        assert a.json()["choices"][0]["text"] == local_text  # held tokens are replayed, not lost
        b = _complete(dev, UNSURE)
        assert b.headers["x-edgegen-route"] == "upstream" and b.json()["model"] == "cloud"
        assert b.headers["x-edgegen-fallback"] == "low_confidence" and "<" in b.headers["x-edgegen-confidence"]
        # streams: decided before the first byte, so the whole stream comes from one source
        for prompt, model in ((SURE, "device"), (UNSURE, "cloud")):
            with httpx.stream("POST", dev.url + "/v1/completions", headers=AUTH, timeout=60,
                              json={"prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": True}) as r:
                events = [e for e in sse_events(r.iter_lines()) if e != "[DONE]"]
            assert {e["model"] for e in events} == {model}
        chat = httpx.post(dev.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                          json={"messages": [{"role": "user", "content": UNSURE}], "max_tokens": 8})
        assert chat.status_code == 200 and "x-edgegen-confidence" in chat.headers


def test_unreachable_upstream_keeps_the_local_answer(stories_gguf: Path) -> None:
    with _device(stories_gguf, f"http://127.0.0.1:{free_port()}", 0.0) as dev:  # everything falls short
        r = _complete(dev, UNSURE)
        assert r.status_code == 200 and r.headers["x-edgegen-route"] == "local"
